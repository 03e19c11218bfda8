"""Ask the policy one question and watch it search: the first demo to try.

    python -m launch.ask question="Where was the director of Blue Harbor born?" checkpoint=DIR
    python -m launch.ask question="..." rollout.engine=hf        # the model config's policy, HF generate

Tool arguments (top-level keys; every other key=value is a Hydra override):
  question=TEXT    the question (required; quote it for the shell)
  checkpoint=DIR   Hugging Face model directory, a training checkpoint or a run directory
                   (as in launch.evaluate); default: model.path, or the tiny policy built
                   for data.output_dir

Runs in the user's process: one RolloutWorker (rollout.engine) and an in-process
retriever over retrieval.index_dir or retrieval.corpus_path (default:
<data.output_dir>/corpus.jsonl). Greedy. Prints each turn (the policy's text, its query
and the titles retrieved) and the final answer; the answer is not scored.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from launch.cli import run_tool, split_tool_args
from launch.evaluate import eval_session, resolve_model
from workers.config import Config, ConfigError
from workers.data.rows import QARow, make_row
from workers.evaluation import EvalRecord

TOOL_ARGS = ("question", "checkpoint")
"""Top-level keys this tool takes besides the Hydra overrides."""


def question_row(question: str) -> QARow:
    """A row for a free-form question: default prompt, no known answer or support passages."""
    return make_row(id="ask", data_source="ask", question=question, targets=(), search_keys=(),
                    support_docs=(), support_doc_ids=(), split="ask", index=0, num_hops=0)


def _indent(text: str, prefix: str = "    ") -> str:
    if not text.strip():
        return f"{prefix}(blank: {len(text)} whitespace characters)"
    return "\n".join(prefix + line for line in text.strip().splitlines())


def format_trajectory(record: EvalRecord) -> str:
    """Readable turns: the policy's text, the query and retrieved titles, then the answer."""
    lines = []
    for i, turn in enumerate(record.turns, 1):
        lines.append(f"[turn {i}] {turn['kind']}")
        if "text" in turn:
            lines.append(_indent(str(turn["text"])))
        if turn["kind"] == "search":
            lines.append(f"  query: {turn['query']}")
            titles = turn["doc_titles"] or ["(no documents)"]
            lines.append("  retrieved: " + " | ".join(t or "(untitled)" for t in titles))
    if not record.turns:
        lines.append("(the policy produced no turns)")
    if record.prediction is None:
        lines.append("answer: (none: the policy never wrote <answer> ... </answer>)")
    else:
        lines.append(f"answer: {record.prediction}")
    return "\n".join(lines)


def ask(cfg: Config, question: str, checkpoint: str | None) -> int:
    """Answer ``question`` greedily and print the trajectory."""
    try:
        model_path = resolve_model(cfg, checkpoint)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    with eval_session(cfg, model_path) as session:
        try:
            record = session.evaluate([question_row(question)], decode=True).records[0]
        except ValueError as exc:  # the prompt is longer than rollout.max_prompt_tokens
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print(f"policy: {model_path} (engine {cfg.rollout.engine}, greedy)")
    print(f"question: {question}")
    print(format_trajectory(record))
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    """Split the tool arguments from the overrides and run."""
    tool_args, overrides = split_tool_args(sys.argv[1:] if argv is None else argv, TOOL_ARGS)

    def main(cfg: Config) -> int:
        question = tool_args.get("question", "").strip()
        if not question:
            raise ConfigError("question", 'required: question="your question"')
        return ask(cfg, question, tool_args.get("checkpoint") or None)

    return run_tool(main, overrides, usage=__doc__ or "")


if __name__ == "__main__":
    sys.exit(cli())

"""Retrieval service: corpus store, encoders, FAISS/BM25 indexes, the retriever, its HTTP API.

Ray-free (never imports ``ray``): the retriever runs in the retrieval actor
(``actors/retrieval.py``), in the HTTP server (``launch.serve_retrieval``), in benchmarks and
tests. Entry points: ``retriever.build_retriever``, ``index.build_index``,
``batching.BatchingSearcher``, ``http.app_for_retriever``. See docs/retrieval.md.
"""

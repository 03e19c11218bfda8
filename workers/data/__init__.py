"""Datasets: the StepSearch/Search-R1 row format, converters and the synthetic toyworld.

Runs wherever data is prepared or loaded (the driver, ``launch.prepare_data``).
"""

from workers.data.corpus import Passage, passage_id, read_corpus_jsonl, write_corpus_jsonl
from workers.data.problems import DataError, Problem, ProblemLog
from workers.data.rows import QARow, read_rows, row_from_dict, row_to_dict, write_rows

__all__ = [
    "DataError",
    "Passage",
    "Problem",
    "ProblemLog",
    "QARow",
    "passage_id",
    "read_corpus_jsonl",
    "read_rows",
    "row_from_dict",
    "row_to_dict",
    "write_corpus_jsonl",
    "write_rows",
]

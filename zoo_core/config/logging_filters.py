"""Logging filters used by zoo's Hydra logging configs (``conf/hydra/job_logging/zoo.yaml`` for a job,
``conf/hydra/hydra_logging/zoo.yaml`` for the launching ``zoo run`` process).

A record logged with ``extra={FILE_ONLY: True}`` goes to the run's ``zoo.log`` but not to the console:
zoo uses it for what third-party tools print (faster-coco-eval's summary and progress, pycocotools'
output), so the user sees zoo's own summary once and the tool's text stays in the log.
"""
from __future__ import annotations

import logging

#: The ``LogRecord`` attribute that keeps a record off the console.
FILE_ONLY = "zoo_file_only"


class HideFileOnly(logging.Filter):
    """Drop records marked ``FILE_ONLY`` (attach to console handlers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, FILE_ONLY, False)


class LoggerTree(logging.Filter):
    """Pass the records of logger ``name`` and its children (``include=True``) or all others (``include=False``):
    the launching process prints zoo's records in zoo's console style and Hydra's in Hydra's."""

    def __init__(self, name: str = "zoo", include: bool = True):
        super().__init__()
        self.tree = name
        self.include = include

    def filter(self, record: logging.LogRecord) -> bool:
        inside = record.name == self.tree or record.name.startswith(self.tree + ".")
        return inside == self.include

"""Logging filters used by the Hydra job-logging config (``conf/hydra/job_logging/zoo.yaml``).

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

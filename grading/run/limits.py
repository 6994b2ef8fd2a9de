"""`Limits`: what one submission may use. The single source of the defaults of the batch
grader's flags, the Gradescope builder's flags and the sandbox; argparse reads them (and
their help) from here, and a student's feedback names them (`Limits.describe`).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields


def _limit(default, help: str, flag: str | None = None, unit: str = ""):
    return field(default=default, metadata={"help": help, "flag": flag, "unit": unit})


@dataclass(frozen=True)
class Limits:
    cell_timeout: float = _limit(300.0, "seconds per cell", "--cell-timeout", "s")
    total_timeout: float = _limit(1800.0, "seconds for one submission's notebooks, all "
                                  "together", "--timeout", "s")
    memory_gb: float = _limit(16.0, "address-space limit of each kernel, GB (torch reserves "
                              "a lot)", "--memory-gb", "GB")
    disk_gb: float = _limit(10.0, "what one submission's work folder may hold, GB (checked "
                            "after each notebook; each file is also limited to file_gb)",
                            "--disk-gb", "GB")
    processes: int = _limit(512, "processes and threads one submission's kernel may run at "
                            "once", "--processes")
    grading_timeout: float = _limit(900.0, "seconds for the grader's own checks and "
                                    "recomputation of one submission (after its notebooks "
                                    "ran; the base model loads off this clock)",
                                    "--grading-timeout", "s")
    file_gb: float = _limit(4.0, "largest file a kernel may write, GB", unit="GB")
    copy_mb: float = _limit(256.0, "what of a submission's folder is copied for its kernels, "
                            "MB", unit="MB")
    tmp_mb: int = _limit(1024, "the kernel's private /tmp (memory-backed), MB", unit="MB")

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, *names: str) -> None:
        """Add the flags of the named fields (all flagged ones by default), with their
        defaults and help from this record."""
        for f in fields(cls):
            flag = f.metadata["flag"]
            if flag and (not names or f.name in names):
                parser.add_argument(flag, dest=f.name, type=type(f.default), default=f.default,
                                    help=f"{f.metadata['help']} (default {f.default:g})")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Limits":
        """The record from parsed flags; refuses a limit that is not positive."""
        values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        bad = [cls.flag(n) for n, v in values.items() if not v > 0]
        if bad:
            raise ValueError(f"{', '.join(bad)} must be positive")
        return cls(**values)

    @classmethod
    def flag(cls, name: str) -> str:
        return next(f.metadata["flag"] or name for f in fields(cls) if f.name == name)

    def describe(self, name: str) -> str:
        """'at most 512 processes', '16 GB of memory': a limit as a student reads it."""
        value = getattr(self, name)
        return {"processes": f"at most {value} processes and threads per notebook",
                "memory_gb": f"{value:g} GB of memory per kernel",
                "disk_gb": f"{value:g} GB in the work folder and {self.tmp_mb} MB in /tmp",
                "file_gb": f"files of at most {value:g} GB",
                "cell_timeout": f"{value:g} s per cell",
                "total_timeout": f"{value:g} s for all the notebooks together",
                "grading_timeout": f"{value:g} s for the grader's checks"}.get(
                    name, f"{name} = {value:g}")

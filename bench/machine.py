"""Facts about the machine a benchmark ran on, stored beside its numbers."""

from __future__ import annotations

import datetime
import os
import platform


def machine_facts() -> dict:
    import torch

    cpu = platform.processor()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    facts = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    try:
        import llama_cpp

        facts["llama_cpp_python"] = llama_cpp.__version__
    except ImportError:
        pass
    return facts

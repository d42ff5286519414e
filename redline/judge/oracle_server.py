"""The harness's own llama.cpp server on a weights file, outside any sandbox: the judge's oracle
on the original's weights, and a local grader model (:mod:`redline.analysis.grader`).

Run by the *runtime* environment's Python (it has xllamacpp):

    python oracle_server.py MODEL.gguf PORT THREADS FLASH_ATTENTION [CONTEXT_TOKENS [SLOTS]]

FLASH_ATTENTION is auto, enabled or disabled; CONTEXT_TOKENS defaults to 4096 and SLOTS (requests
served at once, sharing the context) to 4.

Listens on 127.0.0.1:PORT, prints ``ready`` once the model is loaded, and exits when its standard
input closes (so it never outlives the harness that started it).
"""

import os
import sys
import threading

import xllamacpp


def main() -> int:
    model, port, threads, flash = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    context = int(sys.argv[5]) if len(sys.argv) > 5 else 4096
    slots = int(sys.argv[6]) if len(sys.argv) > 6 else 4
    params = xllamacpp.CommonParams()
    params.model.path = model
    params.n_ctx = context
    params.n_parallel = slots
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.port = port
    params.hostnames = ["127.0.0.1"]
    params.verbosity = 0
    params.flash_attn_type = getattr(xllamacpp.llama_flash_attn_type, "LLAMA_FLASH_ATTN_TYPE_" + flash.upper())
    server = xllamacpp.Server(params)  # noqa: F841 -- serves while referenced
    print("ready", flush=True)
    threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``intgrads-batch``: explain every example of a file, resumably.

The runner reads a JSONL, CSV or plain-text file, sends each example to an
intgrads-zmq server over HTTP (one it is pointed at, or a private stack it
starts), and appends one row per example to an output folder. Rows are
written whole or not at all, so a run that was interrupted (Ctrl-C, a crash,
``kill -9``) is resumed by running the same command again. At the end it
writes ``summary.json`` and a self-contained ``report.html``.

The modules, one job each:

    inputs.py     the input file -> Examples (JSONL / CSV / TSV / text)
    request.py    command-line options -> the JSON body of every request
    transport.py  HTTP to the server: one request, its errors, cancellation
    rows.py       a reply or a failure -> the row written for an example
    journal.py    rows.jsonl: atomic appends, torn-tail recovery
    shards.py     full tensors as safetensors shards with an index
    resume.py     the output folder: its manifest, what is already done
    runner.py     the run loop: concurrency, retries, Ctrl-C
    progress.py   the progress line (examples/s, ETA)
    stack.py      a private broker + workers + gunicorn for ``--model PATH``
    summary.py    the numbers of summary.json
    svg.py report.py   the plots and report.html
    parquet.py    rows.parquet from the journal (optional, needs pyarrow)
    cli.py        the click command

It never imports torch or numpy: tensors travel as bytes from the reply to
the shard files.
"""

"""heapemu benchmarks: ``python -m benchmarks`` (or ``make bench``). Not timed tests: every
figure is reported next to a reference measured in the same run, as a ratio."""

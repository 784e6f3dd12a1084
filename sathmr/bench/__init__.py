"""Benchmarks: every backend on the same inputs, interleaved, each in its own process (``run``), with
honest stage timings and memory (``measure``), the token-scaling sweep (``scaling``) and the reports
(``report``); ``cli`` is `sathmr bench`."""

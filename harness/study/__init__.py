"""The study: many candidate networks trained offline, coupled online, compared.

``config`` (TOML -> dataclasses), ``layout`` (the study directory and its plan), ``tasks`` (one
task of a stage), ``locks`` (one process per task), ``collect`` (the results table),
``executors`` (local, slurm, mpi), ``farm`` (the mpi4py task farm), ``jobs`` (the study's Slurm
jobs and what the queue says of them), ``progress`` (each task's state, and why), ``runner``
(stages in order, status, cancel). The report is ``harness.report``.
"""

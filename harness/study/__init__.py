"""The study: many candidate networks trained offline, coupled online, compared.

``config`` (TOML -> dataclasses), ``layout`` (the study directory and its plan), ``tasks`` (one
task of a stage), ``collect`` (the results table), ``executors`` (local, slurm, mpi), ``farm``
(the mpi4py task farm), ``runner`` (stages in order, status). The report is ``harness.report``.
"""

"""A cohort of cases: one worker process per device, parts of a folder for array jobs,
and a run that continues where an earlier one stopped.

    run: the predict command's folder run (parts, continue, one or many devices)
    workers: one process per device taking cases from one queue
    parts: every N-th case for part K; merging the parts' results
    resume: which finished cases an earlier run left, by weights, settings and mask sha256
"""

"""Helpers of `scripts/bench`: the benchmark of mountfs against s3fs and rclone mount on s3rver.

Modules: `config` (sizes), `deps` (installs what is missing), `procs` (processes, mounts,
timing), `store` (s3rver and the boto3 client: baselines and referee), `tools` (one class per
mounted filesystem), `memfs` (the pyfuse3 ceiling), `rss` (memory sampling), `workloads`
(what is measured), `report` (medians, ratios, targets, Markdown), `runner` (the order of runs).
"""

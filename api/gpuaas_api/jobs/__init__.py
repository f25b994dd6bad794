"""The job engine: operations recorded in the database and run through ansible-runner. It knows no
operation: each one plugs in through hooks.py (gpuaas_api.operations registers them).

hooks.py       the moments operations plug into (accepted, its turn, run, finished) and periodic tasks
submit.py      record a job: its operation accepts it; it takes its nodes or queues (one transaction)
holds.py       which nodes a job holds, and which jobs come before another
queue.py       which pending job runs next: claiming exactly once, bursts and batches, queued jobs' turns
claims.py      until when a claim holds, by the database's clock; waking a worker
identity.py    which process claimed a job (unique per process start), and whether it is gone
worker.py      the loop that runs a claimed run, each job's finalisation from its host's part; the drain
inventory.py   a run's nodes as inventory hosts;  results.py  a host's part of a run
runner.py      one ansible-runner run: private data dir, inventory as data, events, cancel
finalize.py    the one place a job ends; recovering the jobs of a dead process
lease.py       leases: a running job belongs to its process only while renewed
housekeeper.py each process's recovery and periodic tasks, each in a thread of its own
events.py      a run's events, stored as they arrive;  waiting.py  long polls (?wait=)
retention.py   pruning the jobs finished long ago, with their events, a chunk at a time
"""

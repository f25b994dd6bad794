"""Jobs: node operations recorded in the database and run through ansible-runner.

submit.py   checks the state machine, takes the node, records the job (one transaction)
worker.py   claims pending jobs exactly once and runs them; reconciles after a restart
runner.py   one ansible-runner run: private data dir, inventory as data, events, cancel
finalize.py the one place where a finished job moves the node, cluster and GPU inventory
waiting.py  long polls: GET /api/jobs/{id}?wait= answers once the job has finished
"""

"""The SDK's training jobs: submit, follow, stop, resume and delete them (see `Client`)."""

from __future__ import annotations

import os
import time
import urllib.parse
import urllib.request

FINISHED = ("completed", "failed", "stopped")


class JobsMixin:
    """Training jobs, as `Client` offers them (it supplies `request`, `url`, `token`)."""

    def _job_path(self, name: str, owner: str | None) -> str:
        quote = urllib.parse.quote
        return f"/jobs/{quote(owner or self.user, safe='')}/{quote(name, safe='')}"

    def jobs(self, owner: str | None = None) -> list[dict]:
        """Your jobs, newest first, each as `job` shows it."""
        return self.request("GET", "/jobs", owner=owner)["jobs"]

    def job(self, name: str, owner: str | None = None) -> dict:
        """Its `status` (pending, running, completed, failed, stopped; `reason` says why),
        what it runs, its attempt and restarts, and the newest checkpoint step."""
        return self.request("GET", self._job_path(name, owner))

    def create_job(self, name: str, *, image: str, spec: str, **options) -> dict:
        """Submit a job: `script` (a .py path on the volume) or `command`, with `args`,
        `hyperparameters`, `nodes`, `processes_per_node`, `environment`, `inputs`, `output`,
        `retries`, `time_limit_minutes`. `volume` is the instance whose work volume it runs
        in: inside an instance, this one's by default."""
        volume = options.pop("volume", None) or os.environ.get("ATELIER_INSTANCE")
        body = {"name": name, "image": image, "spec": spec, "volume": volume, **options}
        return self.request("POST", "/jobs", body)

    def stop_job(self, name: str, owner: str | None = None) -> dict:
        return self.request("POST", self._job_path(name, owner) + "/stop")

    def resume_job(self, name: str, owner: str | None = None) -> dict:
        """Run a stopped or failed job again, from its newest checkpoint."""
        return self.request("POST", self._job_path(name, owner) + "/resume")

    def delete_job(self, name: str, owner: str | None = None) -> None:
        """Stop it if it runs, and forget it with its logs and metrics."""
        self.request("DELETE", self._job_path(name, owner))

    def job_events(self, name: str, owner: str | None = None) -> list[dict]:
        """What happened to it, oldest first: {"time", "message"}."""
        return self.request("GET", self._job_path(name, owner) + "/events")["events"]

    def job_metrics(self, name: str, owner: str | None = None) -> dict:
        """{"series": {name: [[step, value], ...]}, "usage": {...}}: what the job logged
        with `atelier.training.log_metrics`, and its CPU and memory use."""
        return self.request("GET", self._job_path(name, owner) + "/metrics")

    def job_logs(
        self, name: str, rank: int = 0, owner: str | None = None, tail: int | None = None
    ) -> str:
        """One rank's log so far (its last `tail` lines)."""
        return self._log_response(name, owner, rank=rank, tail=tail).read().decode()

    def follow_job_logs(self, name: str, rank: int = 0, owner: str | None = None):
        """One rank's log, line by line, as it is written, until the job ends."""
        with self._log_response(name, owner, rank=rank, follow=1) as response:
            for line in response:
                yield line.decode(errors="replace")

    def _log_response(self, name: str, owner: str | None, **query):
        query = urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        url = f"{self.url}{self._job_path(name, owner)}/logs?{query}"
        request = urllib.request.Request(url, headers={"Authorization": f"token {self.token}"})
        return self._open(request)

    def wait_for_job(self, name: str, owner: str | None = None, timeout: float = 3600) -> dict:
        """The job once it has ended (completed, failed or stopped); TimeoutError after
        `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while (job := self.job(name, owner))["status"] not in FINISHED:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"job {name} is still {job['status']} after {timeout:g} s")
            time.sleep(1)
        return job

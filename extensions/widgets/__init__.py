"""Notebook widgets for training jobs: submit one, follow it, list yours.

In a notebook cell of an instance:

    from atelier.widgets import TrainingJobForm
    TrainingJobForm()

picks an image, a spec, nodes × processes per node, the script on the work volume and its
hyperparameters (`lr=0.01` per line), submits the job with the SDK (`atelier.sdk.Client`) and
then follows it below the form: status, events, the log's tail, a chart per metric the
script logs with `atelier.training.log_metrics`, and Stop and Resume buttons.
`JobMonitor("my-job")` follows a job submitted otherwise; `JobList()` lists your jobs.
`DeploymentForm()` serves a model (a job's output) and asks it: see atelier.widgets.deployments.

Outside an instance pass a client: `TrainingJobForm(client=Client(url=..., token=...))`.
The widgets are plain ipywidgets (ipywidgets 8, in every Atelier image): no front-end
extension of Atelier's is needed, the charts are SVG drawn here (atelier.widgets.render).
"""

from __future__ import annotations

import threading

import ipywidgets as widgets

from atelier.sdk import AtelierError, Client
from atelier.widgets.deployments import DeploymentForm, DeploymentMonitor
from atelier.widgets.render import (
    FINISHED,
    RESUMABLE,
    TYPED,
    default_image,
    events_html,
    field_error,
    fits,
    jobs_table_html,
    log_html,
    metrics_html,
    parse_hyperparameters,
    status_html,
    usage_text,
)

__all__ = [
    "DeploymentForm",
    "DeploymentMonitor",
    "JobList",
    "JobMonitor",
    "TrainingJobForm",
    "training_job_form",
]

LOG_TAIL = 40
MOST_PROCESSES = 8  # per node, and nodes: what the form offers
WIDE = {"width": "32em"}
LABELS = {"description_width": "10em"}
# the form's label for each job field the hub may name in a refusal
FIELD_LABELS = {
    "name": "Job name",
    "image": "Image",
    "spec": "Spec",
    "nodes": "Nodes",
    "processes_per_node": "Processes per node",
    "script": "Script",
    "hyperparameters": "Hyperparameters",
}


def describe(error: Exception) -> tuple[str | None, str]:
    """(field label or None, message) for what went wrong calling the hub."""
    if isinstance(error, AtelierError):
        field = FIELD_LABELS.get(error.field, error.field) if error.field else None
        return field, error.message
    return None, f"{type(error).__name__}: {error}"


class JobMonitor(widgets.VBox):
    """A job's status, events, log tail (rank 0) and metrics, with Stop and Resume; it
    refreshes itself every `every` seconds in a background thread until the job has ended,
    then once more. `every=None`: only when `refresh()` is called."""

    def __init__(self, name: str, client: Client | None = None, every: float | None = 2.0):
        self._halt = threading.Event()  # set: stop following (first: close() needs it)
        self.client = client if client is not None else Client()
        self.name = name
        self.every = every
        self.job: dict | None = None
        self.gone = False  # deleted: nothing more to follow
        self.status = widgets.HTML()
        self.error = widgets.HTML()
        self.events = widgets.HTML()
        self.logs = widgets.HTML()
        self.metrics = widgets.HTML()
        self.usage = widgets.HTML()
        self.stop_button = widgets.Button(description="Stop", button_style="warning")
        self.resume_button = widgets.Button(
            description="Resume", button_style="info", disabled=True
        )
        self.stop_button.on_click(lambda _: self.stop())
        self.resume_button.on_click(lambda _: self.resume())
        self._lock = threading.Lock()  # one refresh at a time
        self._following = threading.Lock()  # guards _thread
        self._thread: threading.Thread | None = None
        super().__init__(
            [
                widgets.HBox([self.status, self.stop_button, self.resume_button]),
                self.error,
                widgets.HTML("<b>Events</b>"),
                self.events,
                widgets.HTML(f"<b>Log</b> (rank 0, last {LOG_TAIL} lines)"),
                self.logs,
                widgets.HTML("<b>Metrics</b>"),
                self.metrics,
                self.usage,
            ]
        )
        self.refresh()
        if every is not None:
            self.start()

    def refresh(self) -> dict | None:
        """Fetch and show the job, its events, log tail and metrics; the job, or None when the
        hub refused (the error is shown)."""
        with self._lock:
            try:
                job = self.client.job(self.name)
                events = self.client.job_events(self.name)
                log = self.client.job_logs(self.name, rank=0, tail=LOG_TAIL)
                metrics = self.client.job_metrics(self.name)
            except Exception as error:  # shown: a thread's exception would vanish
                self.gone = isinstance(error, AtelierError) and error.status == 404
                self.error.value = field_error(*describe(error))
                return None
            self.job = job
            self.error.value = ""
            self.status.value = status_html(job)
            self.events.value = events_html(events)
            self.logs.value = log_html(log)
            self.metrics.value = metrics_html(metrics.get("series") or {})
            self.usage.value = usage_text(metrics.get("usage") or {})
            self.stop_button.disabled = job["status"] in FINISHED
            self.resume_button.disabled = job["status"] not in RESUMABLE
            return job

    def start(self) -> None:
        """Refresh in the background until the job has ended (again, after a resume)."""
        with self._following:
            if self.every is None or self.gone or self._thread is not None:
                return
            if (self.job or {}).get("status") in FINISHED:
                return
            self._halt.clear()
            self._thread = threading.Thread(
                target=self._follow, name=f"atelier job {self.name}", daemon=True
            )
            self._thread.start()

    def _follow(self) -> None:
        ended = False  # seen ended once: the next refresh is the last
        while not self._halt.wait(self.every):
            job = self.refresh()
            with self._following:
                if self.gone or (ended and (self.job or {}).get("status") in FINISHED):
                    self._thread = None
                    return
            # an ended job's last lines and metrics may land just after its status
            ended = job is not None and job["status"] in FINISHED
        with self._following:
            self._thread = None

    def stop(self) -> None:
        self._act(self.client.stop_job)

    def resume(self) -> None:
        """Run the stopped or failed job again from its newest checkpoint, and follow it."""
        if self._act(self.client.resume_job):
            self.start()

    def _act(self, action) -> bool:
        """Stop or resume, the buttons disabled meanwhile (a second click would be refused)."""
        before = (self.stop_button.disabled, self.resume_button.disabled)
        self.stop_button.disabled = self.resume_button.disabled = True
        try:
            action(self.name)
        except Exception as error:
            self.error.value = field_error(*describe(error))
            self.stop_button.disabled, self.resume_button.disabled = before
            return False
        self.refresh()
        return True

    def close(self) -> None:
        """Stop refreshing, and close the widget."""
        self._halt.set()
        super().close()


class TrainingJobForm(widgets.VBox):
    """Submit a training job; once submitted its JobMonitor shows below the form."""

    def __init__(self, client: Client | None = None, every: float | None = 2.0):
        self.client = client if client is not None else Client()
        self.every = every
        self.monitor: JobMonitor | None = None
        self.images: list[dict] = []
        self.specs: list[dict] = []
        self.error = widgets.HTML()
        try:
            images = self.client.images(offered=True)
            self.specs = self.client.specs(available=True)
        except Exception as error:
            self.error.value = field_error(*describe(error))
        else:
            self.images = [image for image in images if image.get("status", "active") == "active"]
        self.image = widgets.Dropdown(
            description="Image",
            options=[
                (image.get("display_name") or image["name"], image["name"]) for image in self.images
            ],
            value=default_image(self.images, self.specs),
            layout=WIDE,
            style=LABELS,
        )
        self.spec = widgets.Dropdown(description="Spec", layout=WIDE, style=LABELS)
        self.nodes = widgets.BoundedIntText(
            value=1, min=1, max=MOST_PROCESSES, description="Nodes", style=LABELS, **TYPED
        )
        self.processes_per_node = widgets.BoundedIntText(
            value=1,
            min=1,
            max=MOST_PROCESSES,
            description="Processes per node",
            style=LABELS,
            **TYPED,
        )
        self.script = widgets.Text(
            value="train.py", description="Script", layout=WIDE, style=LABELS, **TYPED
        )
        self.hyperparameters = widgets.Textarea(
            description="Hyperparameters",
            placeholder="lr=0.01\nepochs=10\noptimizer=adam",
            layout={**WIDE, "height": "6em"},
            style=LABELS,
            **TYPED,
        )
        self.name = widgets.Text(
            description="Job name", placeholder="e.g. resnet-1", layout=WIDE, style=LABELS, **TYPED
        )
        self.submit_button = widgets.Button(description="Submit", button_style="primary")
        self.submit_button.on_click(lambda _: self.submit())
        self.monitor_box = widgets.VBox()
        self.image.observe(lambda _: self._offer_specs(), names="value")
        self._offer_specs()
        super().__init__(
            [
                widgets.HTML("<b>New training job</b>"),
                self.image,
                self.spec,
                self.nodes,
                self.processes_per_node,
                self.script,
                self.hyperparameters,
                self.name,
                self.submit_button,
                self.error,
                self.monitor_box,
            ]
        )

    def _offer_specs(self) -> None:
        """The specs the chosen image may run on (the catalog's flavor rule)."""
        image = next((i for i in self.images if i["name"] == self.image.value), {})
        names = [spec["name"] for spec in self.specs if fits(image, spec)]
        labels = {spec["name"]: spec.get("display_name") or spec["name"] for spec in self.specs}
        current = self.spec.value
        self.spec.options = [(labels[name], name) for name in names]
        self.spec.value = current if current in names else (names[0] if names else None)

    def submit(self) -> dict | None:
        """Submit the job as the form says; the job, or None with the error shown naming the
        field at fault."""
        self.error.value = ""
        name = self.name.value.strip()
        if not name:
            self.error.value = field_error(FIELD_LABELS["name"], "give the job a name")
            return None
        try:
            hyperparameters = parse_hyperparameters(self.hyperparameters.value)
        except ValueError as error:
            self.error.value = field_error(FIELD_LABELS["hyperparameters"], str(error))
            return None
        self.submit_button.disabled = True
        try:
            job = self.client.create_job(
                name,
                image=self.image.value,
                spec=self.spec.value,
                script=self.script.value.strip(),
                hyperparameters=hyperparameters,
                nodes=self.nodes.value,
                processes_per_node=self.processes_per_node.value,
            )
        except Exception as error:
            self.error.value = field_error(*describe(error))
            return None
        finally:
            self.submit_button.disabled = False
        if self.monitor is not None:
            self.monitor.close()
        self.monitor = JobMonitor(job["name"], client=self.client, every=self.every)
        self.monitor_box.children = [self.monitor]
        return job


class JobList(widgets.VBox):
    """Your training jobs with their status, and a Refresh button."""

    def __init__(self, client: Client | None = None):
        self.client = client if client is not None else Client()
        self.table = widgets.HTML()
        self.error = widgets.HTML()
        self.refresh_button = widgets.Button(description="Refresh", icon="refresh")
        self.refresh_button.on_click(lambda _: self.refresh())
        super().__init__([self.refresh_button, self.error, self.table])
        self.refresh()

    def refresh(self) -> list[dict] | None:
        try:
            jobs = self.client.jobs()
        except Exception as error:
            self.error.value = field_error(*describe(error))
            return None
        self.error.value = ""
        self.table.value = jobs_table_html(jobs)
        return jobs


def training_job_form(client: Client | None = None) -> TrainingJobForm:
    return TrainingJobForm(client=client)

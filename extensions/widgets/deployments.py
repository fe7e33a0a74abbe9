"""Notebook widgets for deployments: serve a model, follow it, ask it.

In a notebook cell of an instance:

    from atelier.widgets import DeploymentForm
    DeploymentForm()

picks an image, a spec, the model (a completed training job's output, or a model directory on
this instance's work volume), a name and the replica count, deploys it with the SDK
(`atelier.sdk.Client.create_deployment`) and then follows it below the form: status (the
version serving, why one failed), the endpoint on the hub's address, the replicas, the request
metrics and the events. Create key makes an app key, shown that once; Send asks the model with
it: numbers such as `1.0, 2.0` (an [n, 1] FP32 input named x) or JSON (a list of OIP v2 input
tensors, or {input name: nested list}), and shows its answer or why it refused.
`DeploymentMonitor("my-model")` follows and asks a deployment made otherwise.

Outside an instance pass a client (and, for a model directory, the instance whose volume it is
on): `DeploymentForm(client=Client(url=..., token=...), volume="lab")`.
"""

from __future__ import annotations

import threading
from html import escape

import ipywidgets as widgets

from atelier.sdk import AtelierError, Client
from atelier.widgets.render import (
    TYPED,
    answer_html,
    default_image,
    deployment_details_html,
    deployment_status_html,
    events_html,
    field_error,
    fits,
    parse_inputs,
)

__all__ = ["DeploymentForm", "DeploymentMonitor"]

BUSY = ("deploying", "upgrading")  # followed every `every` seconds; otherwise QUIET times slower
QUIET = 15
MOST_REPLICAS = 8  # the hub's limits.deployment_replicas by default
WIDE = {"width": "32em"}
LABELS = {"description_width": "10em"}
FIELD_LABELS = {
    "name": "Name", "image": "Image", "spec": "Spec", "job": "Training job",
    "model": "Model directory", "replicas": "Replicas",
}  # fmt: skip
KEY_NOTE = "shown this once: the hub keeps only its digest. Copy it now if you need it later."


def describe(error: Exception) -> tuple[str | None, str]:
    """(field label or None, message) for what went wrong calling the hub or the model."""
    if isinstance(error, AtelierError):
        field = FIELD_LABELS.get(error.field, error.field) if error.field else None
        return field, error.message
    return None, f"{type(error).__name__}: {error}"


class DeploymentMonitor(widgets.VBox):
    """A deployment's status, endpoint, replicas, metrics and events, refreshed in a background
    thread (every `every` seconds while it deploys or upgrades, QUIET times slower otherwise)
    until closed; Create key and a test request. `every=None`: only on `refresh()`."""

    def __init__(
        self, name: str, client: Client | None = None, every: float | None = 2.0, owner=None
    ):
        self._halt = threading.Event()  # set: stop following (first: close() needs it)
        self.client = client if client is not None else Client()
        self.name, self.owner, self.every = name, owner, every
        self.deployment: dict | None = None
        self.gone = False  # deleted: nothing more to follow
        self.status, self.error, self.details = widgets.HTML(), widgets.HTML(), widgets.HTML()
        self.events, self.new_key, self.answer = widgets.HTML(), widgets.HTML(), widgets.HTML()
        self.key = widgets.Password(description="App key", layout=WIDE, style=LABELS, **TYPED)
        self.key_button = widgets.Button(description="Create key", button_style="info")
        self.input_name = widgets.Text(value="x", description="Input name", style=LABELS, **TYPED)
        self.inputs = widgets.Textarea(
            description="Inputs",
            placeholder='1.0, 2.0   or   [{"name": "x", "shape": [2, 1], "datatype": "FP32", '
            '"data": [1.0, 2.0]}]',
            layout={**WIDE, "height": "4em"},
            style=LABELS,
            **TYPED,
        )
        self.send_button = widgets.Button(description="Send", button_style="primary")
        self.key_button.on_click(lambda _: self.create_key())
        self.send_button.on_click(lambda _: self.send())
        self._lock = threading.Lock()  # one refresh at a time
        self._thread: threading.Thread | None = None
        super().__init__([
            self.status, self.error, self.details, widgets.HTML("<b>Events</b>"), self.events,
            widgets.HTML("<b>Test request</b>"), widgets.HBox([self.key, self.key_button]),
            self.new_key, self.input_name, self.inputs, self.send_button, self.answer,
        ])  # fmt: skip
        self.refresh()
        if every is not None and not self.gone:
            self._thread = threading.Thread(
                target=self._follow, name=f"atelier deployment {name}", daemon=True
            )
            self._thread.start()

    def endpoint(self, deployment: dict) -> str:
        try:
            return self.client.hub_address() + deployment["url"]
        except AtelierError as error:
            return f"{deployment['url']} on the hub's address ({error.message})"

    def refresh(self) -> dict | None:
        """Fetch and show the deployment and its events; it, or None when the hub refused
        (the error is shown)."""
        with self._lock:
            try:
                deployment = self.client.deployment(self.name, self.owner)
                events = self.client.deployment_events(self.name, self.owner)
            except Exception as error:  # shown: a thread's exception would vanish
                self.gone = isinstance(error, AtelierError) and error.status == 404
                self.error.value = field_error(*describe(error))
                return None
            self.deployment = deployment
            self.error.value = ""
            self.status.value = deployment_status_html(deployment)
            self.details.value = deployment_details_html(deployment, self.endpoint(deployment))
            self.events.value = events_html(events)
            return deployment

    def _follow(self) -> None:
        while not self._halt.wait(self._pause()):
            self.refresh()
            if self.gone:
                break
        self._thread = None

    def _pause(self) -> float:
        busy = (self.deployment or {}).get("status") in BUSY
        return self.every if busy else self.every * QUIET

    def create_key(self) -> dict | None:
        """A new app key: shown once below the button, and used by Send from now on."""
        self.key_button.disabled = True
        try:
            made = self.client.create_app_key(self.name, self.owner)
        except Exception as error:
            self.new_key.value = field_error(*describe(error))
            return None
        finally:
            self.key_button.disabled = False
        self.key.value = made["key"]
        self.new_key.value = f"New app key <code>{escape(made['key'])}</code>: {KEY_NOTE}"
        return made

    def send(self) -> dict | None:
        """Ask the model with the inputs and the app key; its answer (shown), or None with
        why it was not asked or what it answered instead."""
        self.answer.value = ""
        key = self.key.value.strip()
        if not key:
            self.answer.value = field_error("App key", "create a key first, or paste one")
            return None
        try:
            inputs = parse_inputs(self.inputs.value, self.input_name.value.strip() or "x")
        except ValueError as error:
            self.answer.value = field_error("Inputs", str(error))
            return None
        self.send_button.disabled = True
        try:
            answer = self.client.predict(self.name, inputs, key=key, owner=self.owner)
        except Exception as error:
            self.answer.value = field_error(*describe(error))
            return None
        finally:
            self.send_button.disabled = False
        self.answer.value = "<b>Answer</b>" + answer_html(answer)
        self.refresh()  # its request counted
        return answer

    def close(self) -> None:
        """Stop refreshing, and close the widget."""
        self._halt.set()
        super().close()


class DeploymentForm(widgets.VBox):
    """Deploy a model; once deployed its DeploymentMonitor shows below the form."""

    def __init__(self, client: Client | None = None, every: float | None = 2.0, volume=None):
        self.client = client if client is not None else Client()
        self.every, self.volume = every, volume
        self.monitor: DeploymentMonitor | None = None
        self.images, self.specs, self.jobs = [], [], []  # what could be read of each
        self.error = widgets.HTML()
        try:
            images = self.client.images(offered=True)
            self.images = [i for i in images if i.get("status", "active") == "active"]
            self.specs = self.client.specs(available=True)
            jobs = self.client.jobs(owner=self.client.user)  # an admin's own, not everyone's
            self.jobs = [job for job in jobs if job.get("status") == "completed"]
        except Exception as error:
            self.error.value = field_error(*describe(error))
        self.image = widgets.Dropdown(
            description="Image",
            options=[(i.get("display_name") or i["name"], i["name"]) for i in self.images],
            value=default_image(self.images, self.specs),
            layout=WIDE,
            style=LABELS,
        )
        self.spec = widgets.Dropdown(description="Spec", layout=WIDE, style=LABELS)
        self.source = widgets.Dropdown(
            description="Model from",
            options=[("a training job's output", "job"), ("a directory on the volume", "model")],
            value="job" if self.jobs else "model",
            layout=WIDE,
            style=LABELS,
        )
        self.job = widgets.Dropdown(
            description="Training job",
            options=[job["name"] for job in self.jobs],
            value=None,
            layout=WIDE,
            style=LABELS,
        )
        self.model = widgets.Text(
            description="Model directory",
            placeholder="models/my-model",
            layout=WIDE,
            style=LABELS,
            **TYPED,
        )
        self.name = widgets.Text(
            description="Name", placeholder="e.g. my-model", layout=WIDE, style=LABELS, **TYPED
        )
        self.replicas = widgets.BoundedIntText(
            value=1, min=1, max=MOST_REPLICAS, description="Replicas", style=LABELS, **TYPED
        )
        self.deploy_button = widgets.Button(description="Deploy", button_style="primary")
        self.deploy_button.on_click(lambda _: self.deploy())
        self.monitor_box = widgets.VBox()
        self.image.observe(lambda _: self._offer_specs(), names="value")
        self.job.observe(lambda _: self._from_job(), names="value")
        self.source.observe(lambda _: self._show_source(), names="value")
        self._offer_specs()
        self.job.value = self.jobs[0]["name"] if self.jobs else None  # the newest
        self._show_source()
        super().__init__([
            widgets.HTML("<b>New deployment</b>"), self.source, self.job, self.model, self.image,
            self.spec, self.name, self.replicas, self.deploy_button, self.error, self.monitor_box,
        ])  # fmt: skip

    def _offer_specs(self) -> None:
        """The specs the chosen image may run on (the catalog's flavor rule)."""
        image = next((i for i in self.images if i["name"] == self.image.value), {})
        names = [spec["name"] for spec in self.specs if fits(image, spec)]
        labels = {spec["name"]: spec.get("display_name") or spec["name"] for spec in self.specs}
        current = self.spec.value
        self.spec.options = [(labels[name], name) for name in names]
        self.spec.value = current if current in names else (names[0] if names else None)

    def _from_job(self) -> None:
        """The image and spec the chosen job ran on, where they are offered."""
        job = next((j for j in self.jobs if j["name"] == self.job.value), {})
        if job.get("image") in [name for _, name in self.image.options]:
            self.image.value = job["image"]
        if job.get("spec") in [name for _, name in self.spec.options]:
            self.spec.value = job["spec"]

    def _show_source(self) -> None:
        from_job = self.source.value == "job"
        self.job.layout.display = "" if from_job else "none"
        self.model.layout.display = "none" if from_job else ""

    def deploy(self) -> dict | None:
        """Deploy as the form says; the deployment, or None with the error shown naming the
        field at fault."""
        self.error.value = ""
        name = self.name.value.strip()
        if self.source.value == "job":
            source = {"job": self.job.value}
            missing = None if self.job.value else ("job", "you have no completed training job")
        else:
            source = {"model": self.model.value.strip(), "volume": self.volume}
            missing = None if source["model"] else ("model", "give the model's directory")
        missing = ("name", "give the deployment a name") if not name else missing
        if missing:
            self.error.value = field_error(FIELD_LABELS[missing[0]], missing[1])
            return None
        self.deploy_button.disabled = True
        try:
            made = self.client.create_deployment(
                name,
                image=self.image.value,
                spec=self.spec.value,
                replicas=self.replicas.value,
                **source,
            )
        except Exception as error:
            self.error.value = field_error(*describe(error))
            return None
        finally:
            self.deploy_button.disabled = False
        if self.monitor is not None:
            self.monitor.close()
        self.monitor = DeploymentMonitor(
            made["name"], client=self.client, every=self.every, owner=made.get("owner")
        )
        self.monitor_box.children = [self.monitor]
        return made

    def close(self) -> None:
        if self.monitor is not None:
            self.monitor.close()
        super().close()

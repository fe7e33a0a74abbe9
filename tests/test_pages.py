"""The create form's inputs are bounded by the hub's configured limits (rendered, no hub)."""

from html.parser import HTMLParser

from atelier.hub.web.pages import options_form
from atelier.spawner.core import MAX_AUTOSTOP_HOURS, Catalog, Image, Limits, Spec

IMAGE = Image("python_3.11-cpu-py_3.11-debian_12-x86_64")
CATALOG = Catalog({IMAGE.name: IMAGE}, {"cpu.2u8g": Spec("cpu.2u8g")})


class Inputs(HTMLParser):
    """Each <input>'s attributes by its name."""

    def __init__(self, html: str):
        super().__init__()
        self.inputs: dict[str, dict] = {}
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        if tag == "input":
            attributes = dict(attrs)
            self.inputs[attributes["name"]] = attributes


def test_the_options_form_carries_the_configured_limits():
    limits = Limits(volume_min_gb=2, volume_max_gb=50, volume_default_gb=9)
    inputs = Inputs(options_form(CATALOG, limits, None)).inputs
    assert (inputs["volume_gb"]["min"], inputs["volume_gb"]["max"]) == ("2", "50")
    assert inputs["volume_gb"]["value"] == "9"
    assert inputs["autostop_hours"]["max"] == str(MAX_AUTOSTOP_HOURS)


def test_the_options_form_shows_the_chosen_volume_over_the_default():
    inputs = Inputs(options_form(CATALOG, Limits(), {"volume_gb": 30})).inputs
    assert inputs["volume_gb"]["value"] == "30"

"""The deployment widget in a real JupyterLab, in headless Chromium: the example trained by a
training job, its output deployed from a notebook with `DeploymentForm()`, followed there until
it runs, an app key made and a test request answered in the widget; the API agrees."""

import re

import pytest
from conftest import TORCH
from notebooks import button, labelled, open_new_notebook, run_cell, wait_for_output
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select
from test_jobs_e2e import submit, with_example
from test_pages_e2e import browser_home

pytestmark = pytest.mark.e2e


def trained(hub, name: str, instance: str) -> dict:
    """The admin's job `name` (y = 3x + 2 learnt, as test_deployments_e2e's) once completed."""
    response = submit(
        hub, hub.admin_token, name=name, volume=instance, processes_per_node=2, args=["--steps=40"]
    )
    assert response.status_code == 201, response.text

    def finished():
        now = hub.atelier("GET", f"/jobs/admin/{name}").json()
        return now if now["status"] in ("completed", "failed", "stopped") else None

    return hub.wait_for(finished, 180, f"job {name} to end")


def test_the_widget_deploys_a_trained_model_and_answers_a_test_request(hub, browser):
    with_example(hub, "admin", "serving", hub.admin_token)
    done = trained(hub, "fit", "serving")
    assert done["status"] == "completed", done
    browser_home(hub, browser)
    panel = open_new_notebook(browser, f"{hub.url}/user/admin/serving/lab")
    code = "from atelier.widgets import DeploymentForm\nDeploymentForm()"
    cell = run_cell(browser, panel, code, timeout=120)  # the kernel's first start included
    wait_for_output(cell, text="Deploy", selector="button.jupyter-button")
    chosen = Select(labelled(cell, "dropdown", "Training job")).first_selected_option.text
    assert chosen == "fit"  # the newest completed job of yours, its image and spec with it
    image = Select(labelled(cell, "dropdown", "Image")).first_selected_option
    assert image.get_attribute("value") == TORCH or "PyTorch" in image.text
    labelled(cell, "text", "Name").send_keys("line")
    button(cell, "Deploy").click()
    status = wait_for_output(cell, text="line running", selector=".widget-html", timeout=180)
    assert "version 1 serving" in status.text, status.text
    wait_for_output(cell, text=f"{hub.url}/deployments/admin/line", selector=".widget-html")
    wait_for_output(cell, text="1 asked, 1 live: #1 ready", selector=".widget-html")
    wait_for_output(cell, text="version 1 serves every request", selector=".widget-html")

    button(cell, "Create key").click()
    shown = wait_for_output(cell, text="shown this once", selector=".widget-html")
    key = shown.find_element(By.CSS_SELECTOR, "code").text
    assert re.fullmatch(r"ak_[0-9a-f]{12}\.[A-Za-z0-9_-]{43}", key), key
    listed = hub.atelier("GET", "/deployments/admin/line/keys").json()["keys"]
    assert [k["prefix"] for k in listed] == [key.split(".")[0]]

    labelled(cell, "textarea", "Inputs").send_keys("1.0, 2.0")
    button(cell, "Send").click()
    answer = wait_for_output(cell, text="Answer", selector=".widget-html", timeout=60)
    values = re.search(r"\[2, 1\]: (.+)", answer.text)
    assert values, answer.text
    assert [round(float(v)) for v in values[1].split(",")] == [5, 8], answer.text  # 3x + 2
    # the router counts requests every 2 s; the monitor shows them at its next poll
    wait_for_output(cell, text="1 (0 errors)", selector=".widget-html", timeout=60)

    deployment = hub.atelier("GET", "/deployments/admin/line").json()
    assert deployment["status"] == "running" and deployment["serving_version"] == 1, deployment
    assert deployment["model"] == "jobs/fit" and deployment["image"] == TORCH
    assert deployment["metrics"]["requests"] == 1 and deployment["metrics"]["errors"] == 0

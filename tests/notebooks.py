"""Notebook code run as a person runs it: in JupyterLab, in a browser (selenium's Chromium).

    cell = run_in_new_notebook(browser, f"{lab}/lab?token={token}", "print(6 * 7)", text="42")

opens JupyterLab at that URL (a token in it, or a browser already signed in to the hub),
starts a notebook from the launcher with its default kernel, types the code into the first
cell, runs it and waits until the cell's output shows `text` or an element matching the CSS
`selector`. Widgets render there as in any notebook, so the output can be clicked and read
further with selenium (`cell.find_element(...)`, `wait_for_output(...)`).

In Chromium the code reaches the cell as one text input, as if pasted: typed key by key it
would meet the editor's auto-indenting and bracket closing (and take a second per hundred
characters). Other browsers type one line that decodes and runs it with IPython.
"""

from __future__ import annotations

import base64
import json
import time
from urllib.parse import urlsplit, urlunsplit

from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement

NOTEBOOK_CARD = '.jp-LauncherCard[data-category="Notebook"]'
NOTEBOOK = ".jp-NotebookPanel:not(.lm-mod-hidden)"
EDITOR = ".jp-Cell .cm-content[contenteditable='true']"
KERNEL_IDLE = ".jp-Notebook-ExecutionIndicator[data-status='idle']"


class NotebookTimeout(AssertionError):
    """What was awaited did not show in time; the message carries what the page showed."""


def wait_until(condition, timeout: float, describe) -> object:
    """`condition()`'s first truthy answer, polled; NotebookTimeout with `describe()` after
    `timeout` seconds. An element that went stale while the page redraws counts as falsy."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            answer = condition()
        except (StaleElementReferenceException, WebDriverException):
            answer = None
        if answer:
            return answer
        if time.monotonic() >= deadline:
            raise NotebookTimeout(f"after {timeout:g} s: {describe()}")
        time.sleep(0.1)


def visible(driver: WebDriver | WebElement, selector: str) -> WebElement | None:
    return next(
        (e for e in driver.find_elements(By.CSS_SELECTOR, selector) if e.is_displayed()), None
    )


def open_new_notebook(driver: WebDriver, lab_url: str, timeout: float = 60) -> WebElement:
    """Open JupyterLab at `lab_url` with a fresh layout (`reset`: no documents restored from
    an earlier visit, only the launcher) and start a notebook from the launcher; its panel
    once its kernel is idle."""
    driver.get(with_reset(lab_url))
    card = wait_until(
        lambda: visible(driver, NOTEBOOK_CARD),
        timeout,
        lambda: (
            f"no notebook in JupyterLab's launcher at {driver.current_url}: " + page_text(driver)
        ),
    )
    card.click()
    panel = wait_until(
        lambda: visible(driver, NOTEBOOK),
        timeout,
        lambda: "no notebook opened: " + page_text(driver),
    )
    wait_until(
        lambda: visible(panel, EDITOR) and visible(panel, KERNEL_IDLE),
        timeout,
        lambda: "the notebook's kernel did not become idle: " + page_text(driver),
    )
    return panel


def with_reset(url: str) -> str:
    parts = urlsplit(url)
    query = "&".join(part for part in (parts.query, "reset") if part)
    return urlunsplit(parts._replace(query=query))


def typed_line(code: str) -> str:
    """One line that runs `code` as a cell of its own, in the kernel's IPython."""
    encoded = base64.b64encode(code.encode()).decode()
    return f"get_ipython().run_cell(__import__('base64').b64decode('{encoded}').decode())"


def type_code(driver: WebDriver, editor: WebElement, code: str, paste: bool = True) -> str:
    """Put `code` into the focused cell editor; what the cell should then hold. Chromium
    inserts it as one input (as a paste would: no auto-indent, no closed brackets); other
    browsers, or `paste=False`, get it typed key by key, as one line."""
    if paste and hasattr(driver, "execute_cdp_cmd"):
        driver.execute_cdp_cmd("Input.insertText", {"text": code})
        return code
    line = typed_line(code)
    editor.send_keys(line)
    return line


def lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.strip().splitlines()]


def run_cell(
    driver: WebDriver, panel: WebElement, code: str, timeout: float = 60, paste: bool = True
) -> WebElement:
    """Type `code` into the notebook's last cell and run it; that cell once it has run."""
    cell = panel.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell")[-1]
    editor = cell.find_element(By.CSS_SELECTOR, ".cm-content")
    editor.click()
    typed = type_code(driver, editor, code, paste)
    wait_until(
        lambda: lines(editor.text) == lines(typed),
        10,
        lambda: f"the cell holds {editor.text!r}, not {typed!r}",
    )
    editor.send_keys(Keys.SHIFT, Keys.ENTER)
    deadline = time.monotonic() + timeout
    while True:  # a Shift+Enter the page dropped (the cell never queued: "[ ]:") is sent again
        try:
            wait_until(
                lambda: prompt(cell) not in ("", "[ ]:", "[*]:"),
                min(10, max(0, deadline - time.monotonic())),
                lambda: f"the cell still runs ({prompt(cell)}); its output: {output_text(cell)}",
            )
            return cell
        except NotebookTimeout:
            if time.monotonic() >= deadline or prompt(cell) != "[ ]:":
                if time.monotonic() >= deadline:
                    raise
                continue
            editor.click()
            editor.send_keys(Keys.SHIFT, Keys.ENTER)


def prompt(cell: WebElement) -> str:
    return cell.find_element(By.CSS_SELECTOR, ".jp-InputPrompt").text.strip()


def output_text(cell: WebElement) -> str:
    areas = cell.find_elements(By.CSS_SELECTOR, ".jp-OutputArea")
    return areas[0].text if areas else ""


def wait_for_output(
    cell: WebElement, text: str | None = None, selector: str | None = None, timeout: float = 30
) -> WebElement:
    """The cell's output element showing `text` (within `selector`'s elements, when given), or
    the first visible element matching `selector`."""
    if text is None and selector is None:
        raise ValueError("wait for text=, selector= or both")

    def found():
        area = cell.find_element(By.CSS_SELECTOR, ".jp-OutputArea")
        candidates = area.find_elements(By.CSS_SELECTOR, selector) if selector else [area]
        return next(
            (e for e in candidates if e.is_displayed() and (text is None or text in e.text)), None
        )

    awaited = " and ".join(
        part for part in (text and f"text {text!r}", selector and f"selector {selector!r}") if part
    )
    return wait_until(
        found, timeout, lambda: f"no output with {awaited}; it shows: {output_text(cell)!r}"
    )


def run_in_new_notebook(
    driver: WebDriver,
    lab_url: str,
    code: str,
    text: str | None = None,
    selector: str | None = None,
    timeout: float = 60,
) -> WebElement:
    """Open a new notebook at `lab_url`, run `code` in its first cell, wait for `text` and/or
    `selector` in the output; the cell."""
    panel = open_new_notebook(driver, lab_url, timeout)
    cell = run_cell(driver, panel, code, timeout)
    if text is not None or selector is not None:
        wait_for_output(cell, text, selector, timeout)
    return cell


def page_text(driver: WebDriver, most: int = 2000) -> str:
    """What the page shows, shortened, for a failure's message."""
    try:
        shown = driver.find_element(By.TAG_NAME, "body").text
    except WebDriverException as error:
        return f"(unreadable: {error.msg})"
    return json.dumps(shown[:most])


def labelled(cell: WebElement, kind: str, label: str) -> WebElement:
    """The input of the `kind` ipywidget (text, textarea, dropdown) labelled `label`."""
    for box in cell.find_elements(By.CSS_SELECTOR, f".widget-{kind}"):
        if box.find_element(By.CSS_SELECTOR, "label").text == label:
            return box.find_element(By.CSS_SELECTOR, "input, textarea, select")
    raise AssertionError(f"no {kind} labelled {label!r}")


def button(cell: WebElement, description: str) -> WebElement:
    return next(
        b for b in cell.find_elements(By.CSS_SELECTOR, "button.jupyter-button")
        if b.text == description
    )  # fmt: skip

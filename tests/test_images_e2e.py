"""The catalog's images ship what their users expect, seen from inside a real instance."""

import subprocess

import pytest
from conftest import TORCH, environ_of, owner_of

pytestmark = pytest.mark.e2e


def test_the_pytorch_image_has_numpy_pandas_and_friends(hub):
    """Without numpy, torch warns "Failed to initialize NumPy" and `.numpy()` fails."""
    token = hub.add_user("pia")
    pid = hub.start("pia", "torch", token, {"image": TORCH, "spec": "cpu.2u4g"})
    code = (
        "import torch, numpy, pandas, matplotlib, sklearn, tqdm;"
        "print(torch.ones(2).numpy().sum(), pandas.Series([1, 2]).sum())"
    )
    result = subprocess.run(  # as the instance's account, in its environment
        ["/usr/sbin/runuser", "-p", "-u", owner_of(pid), "--", "python", "-c", code],
        env=environ_of(pid),
        cwd="/",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (result.stdout, result.stderr) == ("2.0 3\n", "")

"""Distributed data-parallel training, small enough for CPUs: fit y = 3x + 2 on synthetic data.

As an Atelier training job every rank runs this under torchrun, with checkpoints, outputs and
the backend chosen by Atelier; it also runs on its own:

    torchrun --nproc-per-node=2 examples/train_ddp.py --steps 100

(checkpoints in ./checkpoints, the model in ./output, gloo). A run that finds a checkpoint
resumes from it. The trained model is saved as TorchScript, which a deployment can serve
without this file.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from atelier import training


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="train until this step")
    parser.add_argument("--lr", type=float, default=0.05, help="learning rate (SGD)")
    parser.add_argument("--batch-size", type=int, default=32, help="examples per rank and step")
    parser.add_argument("--checkpoint-every", type=int, default=20, help="steps between saves")
    parser.add_argument(
        "--step-seconds", type=float, default=0, help="sleep this long each step (for tests)"
    )
    return parser.parse_args()


def batch(step: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's examples for `step`: the same ones again after a resume."""
    generator = torch.Generator().manual_seed(step * training.world_size() + training.rank())
    x = torch.randn(size, 1, generator=generator)
    noise = 0.1 * torch.randn(size, 1, generator=generator)
    return x, 3 * x + 2 + noise


def mean_over_ranks(value: torch.Tensor) -> float:
    total = value.detach().clone()
    dist.all_reduce(total)
    return total.item() / training.world_size()


def main() -> None:
    args = parse_args()
    training.init_process_group()
    leader = training.rank() == 0
    ranks = torch.tensor([training.rank() + 1.0])
    dist.all_reduce(ranks)  # 1 + 2 + ... + world size: every rank has joined
    print(f"all_reduce world_size={training.world_size()} sum={ranks.item()}", flush=True)

    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    first = 1
    restored = training.load_checkpoint()
    if restored:
        state, step = restored
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        first = step + 1
        if leader:
            print(f"resumed from step {step}", flush=True)
    ddp = DistributedDataParallel(model)

    for step in range(first, args.steps + 1):
        x, y = batch(step, args.batch_size)
        loss = torch.nn.functional.mse_loss(ddp(x), y)
        optimizer.zero_grad()
        loss.backward()  # DDP averages the gradients over the ranks
        optimizer.step()
        loss = mean_over_ranks(loss)
        if leader:
            training.log_metrics(step, loss=loss)
            if step % 10 == 0:
                print(f"step {step} loss {loss:.4f}", flush=True)
        if step % args.checkpoint_every == 0 or step == args.steps:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
            training.save_checkpoint(state, step)
        time.sleep(args.step_seconds)

    if leader:
        os.makedirs(training.output_dir(), exist_ok=True)
        torch.jit.script(model).save(os.path.join(training.output_dir(), "model.pt"))
        print("done", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

"""``pdsim profiles ...`` commands: list, show, import and derive latency profiles."""

from __future__ import annotations

import typer

profiles_app = typer.Typer(no_args_is_help=True, help="List, inspect, import and derive latency profiles (gpu_profiles/).")

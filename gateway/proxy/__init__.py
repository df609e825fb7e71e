"""The egress proxy: the aiohttp application, its ordered pipeline of stages, and the ops endpoints."""

from gateway.proxy.app import RunningGateway, create_app, start_gateway
from gateway.proxy.pipeline import STAGES, Pipeline, build_pipeline

__all__ = ["STAGES", "Pipeline", "RunningGateway", "build_pipeline", "create_app", "start_gateway"]

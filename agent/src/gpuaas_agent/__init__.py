"""The gpuaas agent: the program each GPU node runs for its pools (see docs/agent.md)."""

__version__ = "0.1.0"

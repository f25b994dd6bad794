"""Code the service shares with the collection's modules and the agent: links to
plugins/module_utils, the one copy (docs/architecture.md, "Code shared between the three parts").

Ansible ships a module only what it imports from the collection's module_utils, so the shared files
must live there. The service and the agent link to them (agent/src/gpuaas_agent holds links too);
a wheel or collection build copies a link's target, so installed code needs no checkout.
"""

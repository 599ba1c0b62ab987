"""The shared pydantic models: the OS resource (``os_resource``) and the inputs and outputs of every workflow
(``rollout``) and activity (``host`` for node activities, ``cluster`` for Kubernetes activities)."""

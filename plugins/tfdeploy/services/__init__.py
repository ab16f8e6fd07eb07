"""Services: what a deployment step does to a serving target, built on the hooks (one transaction per change).

Layers: operators -> services -> hooks -> core. A service never imports an operator.
"""

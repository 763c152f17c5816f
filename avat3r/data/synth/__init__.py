"""SynthHeads internals: identities, neutral head geometry, expression deformations, camera rig, rendering.

The public entry point is :mod:`avat3r.data.synthheads`, which re-exports the API from these modules.
"""

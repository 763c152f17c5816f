"""The inference stages as library calls, one module each; the CLI modules only parse arguments and call them.

- ``reconstruct``: photos + cams.json → an ``.avt`` avatar.
- ``animate``: an avatar + expression codes → Gaussians per frame, written as a frame stream.
- ``render``: a frame stream, ``.avt`` or ``.ply`` (``sources``) along a camera path (``camera_path``) → MP4,
  PNG frames, PLY files (``outputs``).

Nothing here prints; progress is reported through an optional ``progress(n)`` callback so the CLI can drive a
progress bar on stderr. ``common`` holds what they share: StageError, the device and the checkpoint loader.
"""

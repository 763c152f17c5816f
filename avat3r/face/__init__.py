"""Face tracking (mediapipe's face mesh, extra ``avat3r[face]``) and what is built on it: head poses for
``lift`` (:mod:`avat3r.face.lift`) and landmark expressions for ``animate --video`` (:mod:`avat3r.face.expressions`)."""

from .tracker import (
    DEFAULT_FOV_DEGREES,
    FaceTrack,
    FaceTracker,
    FaceTrackerMissing,
    NoFaceError,
    default_intrinsics,
    track_faces,
    tracker_available,
)

__all__ = ["DEFAULT_FOV_DEGREES", "FaceTrack", "FaceTracker", "FaceTrackerMissing", "NoFaceError",
           "default_intrinsics", "track_faces", "tracker_available"]

"""Predict on a person's own recording: one video (or audio) file, a transcript or speech recognition.

The entry point is :meth:`emotrain.inference.predict.Predictor.predict_media` (``emotrain predict BUNDLE
--media FILE``); it returns a :class:`MediaPrediction` (:mod:`.run`), written by :mod:`.write`.
"""

from emotrain.inference.media.asr import Transcriber, WhisperTranscriber
from emotrain.inference.media.decode import MediaInfo, MediaLimits
from emotrain.inference.media.run import MediaPrediction, MediaTurn
from emotrain.inference.media.segment import MediaUtterance
from emotrain.inference.media.transcript import Cue

__all__ = ["Cue", "MediaInfo", "MediaLimits", "MediaPrediction", "MediaTurn", "MediaUtterance", "Transcriber",
           "WhisperTranscriber"]

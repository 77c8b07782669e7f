"""Speaker diarization service: who spoke when, offline (embedding clustering) or with pyannote."""

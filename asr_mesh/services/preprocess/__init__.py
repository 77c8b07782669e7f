"""Preprocess service: any audio/video upload → validated 16 kHz mono s16le PCM, via ffmpeg."""

"""Merge service: words × speaker turns → re-cut segments and SRT/VTT/JSON/TXT/RTTM documents."""

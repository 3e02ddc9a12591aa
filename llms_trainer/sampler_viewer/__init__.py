"""Logic of the sampler viewer page (utils/sampler_viewer/web.py), importable and testable without streamlit."""

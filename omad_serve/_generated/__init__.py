"""Stubs compiled from protos/ by `python -m omad_serve.protogen`. Do not edit by hand."""

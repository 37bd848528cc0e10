from model_extraction.cli import app

app()

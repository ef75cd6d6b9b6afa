from qfserve.cli.main import app

app()

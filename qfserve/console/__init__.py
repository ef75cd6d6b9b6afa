"""The web console's domain side: sign-in and sessions, fine-tuning jobs, metrics and usage views.

The console is a client of the same domain functions the CLI calls (store/, services/, sft/); its
HTTP routes are in qfserve/api/console_ui.py, its templates and vendored front-end files here.
"""

"""The web console under /console/: server-rendered pages (Jinja2 + htmx) and a small JSON API.

HTTP only: every action calls the same domain functions as the CLI (store/, services/, sft/ via
console/jobs.py). Not the Qianfan SDK's `/wenxinworkshop/service/list` (that is api/console.py).

Security: a signed-in session is an HttpOnly, SameSite=Strict cookie scoped to /console; every
route but the sign-in page and the static files refuses requests without one (401), and every
state-changing request must carry the session's CSRF token (header or form field) and, when the
browser sends one, a same-origin Origin header (403 otherwise). Failed sign-ins are throttled per
address. Secrets appear only in the response to the request that created them, marked no-store.
"""

from __future__ import annotations

import asyncio
import functools
import time
from importlib import resources
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.responses import JSONResponse, RedirectResponse, Response

from qfserve.api.chat import CHAT_PATH
from qfserve.api.deps import client_address
from qfserve.auth.throttle import FailedAuthThrottle
from qfserve.console import jobs as job_domain
from qfserve.console import metrics_view, signin
from qfserve.console import playground as playground_controls
from qfserve.console.usage import usage_by_app
from qfserve.services import publishing
from qfserve.services.profiles import DEFAULT_PROFILE, PROFILES
from qfserve.sft.data import DataError
from qfserve.store import apps as app_store
from qfserve.store import console as console_store
from qfserve.store import memories as memory_store
from qfserve.store import services as service_store
from qfserve.store import tokens as token_store

PREFIX = "/console"
PLAYGROUND_TOKEN_TTL = 600  # the playground's access token: long enough for a session of tries
SIGNIN_FAIL_LIMIT = 10
SIGNIN_FAIL_WINDOW = 300.0
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")

_package = resources.files("qfserve.console")
templates = Jinja2Templates(directory=str(_package / "templates"))
templates.env.globals["profiles"] = list(PROFILES)
templates.env.globals["safety_policies"] = service_store.SAFETY_POLICIES
templates.env.filters["when"] = lambda t: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "–"


class ConsoleRefusal(Exception):
    def __init__(self, status: int, message: str):
        self.status = status
        self.message = message


async def run(fn, *args, **kwargs):
    """Store calls are blocking SQLite: off the event loop."""
    return await asyncio.to_thread(functools.partial(fn, *args, **kwargs))


def _store(request: Request):
    return request.app.state.store


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is None:  # not every browser sends it on same-origin requests; CSRF tokens still apply
        return True
    return urlsplit(origin).netloc == request.headers.get("host", "")


async def signed_in(request: Request) -> str:
    """The session's CSRF token; refuses (401) without a live session, (403) a state change without CSRF."""
    csrf = await run(signin.session_csrf, _store(request), request.cookies.get(signin.COOKIE_NAME))
    if csrf is None:
        raise ConsoleRefusal(401, "Sign in first: run `qfserve console` on the server for a sign-in link.")
    request.state.csrf = csrf
    if request.method not in SAFE_METHODS:
        if not _same_origin(request):
            raise ConsoleRefusal(403, "Cross-origin request refused.")
        given = request.headers.get(signin.CSRF_HEADER)
        if given is None and "form" in request.headers.get("content-type", ""):
            given = (await request.form()).get(signin.CSRF_FIELD)
        if not signin.csrf_matches(csrf, given if isinstance(given, str) else None):
            raise ConsoleRefusal(403, "Missing or wrong CSRF token: reload the page and try again.")
    return csrf


router = APIRouter(prefix=PREFIX, dependencies=[Depends(signed_in)])
public = APIRouter(prefix=PREFIX)


def page(request: Request, name: str, status: int = 200, *, no_store: bool = False, **context) -> Response:
    context.setdefault("message", request.query_params.get("done"))
    context.setdefault("error", None)
    response = templates.TemplateResponse(request, name, {"csrf": getattr(request.state, "csrf", ""), **context},
                                          status_code=status)
    if no_store:
        response.headers["Cache-Control"] = "no-store"
    return response


def done(path: str, message: str) -> Response:
    """Post/redirect/get, with a one-line confirmation."""
    return RedirectResponse(f"{PREFIX}{path}?{urlencode({'done': message})}", status_code=303)


async def form(request: Request) -> dict[str, str]:
    data = await request.form()
    return {k: v.strip() if isinstance(v, str) else v for k, v in data.items()}


def _int(value, default=None):
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return default


# --- sign-in ---------------------------------------------------------------------------------

def _throttle(request: Request) -> FailedAuthThrottle:
    state = request.app.state
    if getattr(state, "console_signin_throttle", None) is None:
        state.console_signin_throttle = FailedAuthThrottle(SIGNIN_FAIL_LIMIT, SIGNIN_FAIL_WINDOW)
    return state.console_signin_throttle


async def _sign_in(request: Request, token: str) -> Response:
    throttle, address = _throttle(request), client_address(request)
    if throttle.throttled(address):
        return page(request, "signin.html", 429, error="Too many failed sign-ins from this address: wait a few minutes.")
    cookie = await run(signin.sign_in, _store(request), token)
    if cookie is None:
        throttle.failed(address)
        return page(request, "signin.html", 401, error="This sign-in link is unknown, used or expired. "
                                                       "Run `qfserve console` for a new one.")
    # A page that then navigates: a SameSite=Strict cookie set during a navigation that began on
    # another site (a terminal, a mail) is not sent on that navigation's redirects.
    response = page(request, "signed_in.html", no_store=True)
    response.set_cookie(signin.COOKIE_NAME, cookie, max_age=signin.SESSION_TTL, path=PREFIX, httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")
    return response


@public.get("/signin")
async def signin_page(request: Request) -> Response:
    token = request.query_params.get("token")
    if token:
        return await _sign_in(request, token)
    return page(request, "signin.html", 401)


@public.post("/signin")
async def signin_post(request: Request) -> Response:
    if not _same_origin(request):
        return page(request, "signin.html", 403, error="Cross-origin sign-in refused.")
    return await _sign_in(request, (await form(request)).get("token", ""))


@router.post("/signout")
async def signout(request: Request) -> Response:
    await run(signin.sign_out, _store(request), request.cookies.get(signin.COOKIE_NAME))
    response = RedirectResponse(f"{PREFIX}/signin", status_code=303)
    response.delete_cookie(signin.COOKIE_NAME, path=PREFIX)
    return response


@router.get("")
async def root_without_slash(request: Request) -> Response:
    return RedirectResponse(f"{PREFIX}/", status_code=307)


# --- overview --------------------------------------------------------------------------------

@router.get("/")
async def overview(request: Request) -> Response:
    store = _store(request)
    services = await run(service_store.list_services, store)
    apps = await run(app_store.list_apps, store)
    jobs = await run(request.app.state.console_jobs.jobs)
    health = metrics_view.engine_health(request.app.state.engines)
    return page(request, "overview.html", services=services, apps=apps, jobs=jobs[:5], health=health)


# --- services --------------------------------------------------------------------------------

async def _services_page(request: Request, status: int = 200, **context) -> Response:
    store = _store(request)
    services = await run(service_store.list_services, store)
    jobs = [j for j in await run(request.app.state.console_jobs.jobs) if j.status == "succeeded"]
    return page(request, "services.html", status, services=services, finished_jobs=jobs,
                default_profile=DEFAULT_PROFILE, defaults={"rpm": service_store.DEFAULT_RPM,
                                                           "tpm": service_store.DEFAULT_TPM}, **context)


@router.get("/services")
async def services_list(request: Request) -> Response:
    return await _services_page(request)


def _limits(values: dict) -> dict:
    limits = {}
    for name in ("rpm", "tpm"):
        if values.get(name):
            number = _int(values[name])
            if number is None or number <= 0:
                raise publishing.PublishError(f"{name} must be a positive whole number")
            limits[name] = number
    return limits


@router.post("/services")
async def services_publish(request: Request) -> Response:
    values = await form(request)
    store = _store(request)
    source = values.get("source", "model")
    try:
        adapter = None
        if source == "adapter":
            adapter = values.get("adapter") or None
            if adapter is None:
                raise publishing.PublishError("give the adapter folder")
        elif source == "job":
            job = await run(request.app.state.console_jobs.job, _int(values.get("job"), -1))
            if job is None or job.status != "succeeded":
                raise publishing.PublishError("choose a finished fine-tuning job")
            adapter = job.out_dir
        service = await run(publishing.publish, store, values.get("api_path", ""),
                            model=values.get("model") or "default", adapter=adapter,
                            profile=values.get("profile") or DEFAULT_PROFILE, safety=values.get("safety") or "default",
                            **_limits(values))
    except ValueError as exc:  # PublishError, AdapterError
        return await _services_page(request, 400, error=str(exc), values=values)
    return done("/services", f"published {service.api_path}")


@router.post("/services/{api_path}/change")
async def services_change(api_path: str, request: Request) -> Response:
    values = await form(request)
    try:
        await run(publishing.change, _store(request), api_path, profile=values.get("profile") or None,
                  safety=values.get("safety") or None, **_limits(values))
    except ValueError as exc:
        return await _services_page(request, 400, error=str(exc))
    return done("/services", f"changed {api_path}")


@router.post("/services/{api_path}/delete")
async def services_delete(api_path: str, request: Request) -> Response:
    try:
        await run(service_store.delete_service, _store(request), api_path)
    except service_store.ServiceNotFound as exc:
        return await _services_page(request, 404, error=str(exc))
    return done("/services", f"deleted {api_path}")


# --- apps ------------------------------------------------------------------------------------

def _app_rows(store) -> list[dict]:
    return [{"app": a, "grants": None if a.all_services else app_store.granted_paths(store, a.id)}
            for a in app_store.list_apps(store)]


@router.get("/apps")
async def apps_list(request: Request) -> Response:
    return page(request, "apps.html", apps=await run(_app_rows, _store(request)))


@router.post("/apps")
async def apps_create(request: Request) -> Response:
    name = (await form(request)).get("name", "")
    store = _store(request)
    if not name or len(name) > 64:
        return page(request, "apps.html", 400, apps=await run(_app_rows, store), error="give the app a name (up to 64 characters)")
    try:
        creds = await run(app_store.create_app, store, name)
    except app_store.AppExists as exc:
        return page(request, "apps.html", 400, apps=await run(_app_rows, store), error=str(exc))
    return page(request, "secrets.html", no_store=True, creds=creds.as_dict(), title=f"App {name} created")


async def _app_page(request: Request, name: str, status: int = 200, **context) -> Response:
    store = _store(request)
    try:
        app = await run(app_store.get_app, store, name)
    except app_store.AppNotFound as exc:
        return page(request, "not_found.html", 404, error=str(exc))
    grants = None if app.all_services else await run(app_store.granted_paths, store, app.id)
    services = await run(service_store.list_services, store)
    usage = await run(usage_by_app, store, app.id)
    return page(request, "app.html", status, app=app, grants=grants, services=services,
                usage=[u.__dict__ for u in usage], **context)


@router.get("/apps/{name}")
async def app_detail(name: str, request: Request) -> Response:
    return await _app_page(request, name)


@router.post("/apps/{name}/rotate")
async def app_rotate(name: str, request: Request) -> Response:
    try:
        creds = await run(app_store.rotate_app, _store(request), name)
    except app_store.AppNotFound as exc:
        return page(request, "not_found.html", 404, error=str(exc))
    return page(request, "secrets.html", no_store=True, creds=creds.as_dict(), title=f"App {name} rotated",
                note="The old keys and every access token issued with them stopped working.")


@router.post("/apps/{name}/grants")
async def app_grants(name: str, request: Request) -> Response:
    values = await form(request)
    action, api_path = values.get("action"), values.get("api_path", "")
    store = _store(request)
    try:
        if action == "allow-all":
            await run(app_store.allow_all, store, name)
            return done(f"/apps/{name}", "may call every service")
        if action not in ("grant", "revoke"):
            return await _app_page(request, name, 400, error="unknown action")
        await run(app_store.grant if action == "grant" else app_store.revoke, store, name, api_path)
    except app_store.AppNotFound as exc:
        return page(request, "not_found.html", 404, error=str(exc))
    except app_store.GrantError as exc:  # no such service, or no such grant: the store says which
        return await _app_page(request, name, 400, error=str(exc))
    return done(f"/apps/{name}", f"{'granted' if action == 'grant' else 'revoked'} {api_path}")


@router.post("/apps/{name}/delete")
async def app_delete(name: str, request: Request) -> Response:
    try:
        await run(app_store.delete_app, _store(request), name)
    except app_store.AppNotFound as exc:
        return page(request, "not_found.html", 404, error=str(exc))
    return done("/apps", f"deleted app {name}")


# --- playground ------------------------------------------------------------------------------

@router.get("/playground")
async def playground(request: Request) -> Response:
    store = _store(request)
    return page(request, "playground.html", services=await run(service_store.list_services, store),
                apps=await run(app_store.list_apps, store), chat_path=CHAT_PATH.replace("{api_path}", ""),
                controls=playground_controls.CONTROLS, groups=playground_controls.GROUPS)


@router.post("/api/playground/token")
async def playground_token(request: Request) -> Response:
    """A short-lived access token of the chosen app: the page then calls the real v1 chat route
    with it, exactly as a client would (auth, grants, limits, safety, memory all apply)."""
    try:
        body = await request.json()
    except ValueError:
        body = {}
    name = body.get("app") if isinstance(body, dict) else None
    store = _store(request)
    try:
        app = await run(app_store.get_app, store, str(name))
    except app_store.AppNotFound as exc:
        return JSONResponse({"error": str(exc)}, status_code=404)
    access, _, expires_at = await run(token_store.issue_token, store, app, PLAYGROUND_TOKEN_TTL)
    return JSONResponse({"access_token": access, "expires_at": expires_at}, headers={"Cache-Control": "no-store"})


# --- memory ----------------------------------------------------------------------------------

async def _memory_page(request: Request, app_name: str, user_id: str, status: int = 200, **context) -> Response:
    store = _store(request)
    apps = await run(app_store.list_apps, store)
    memories, error = None, None
    if app_name and user_id:
        try:
            app = await run(app_store.get_app, store, app_name)
            memories = await run(memory_store.list_memories, store, user_id, app_id=app.id)
        except app_store.AppNotFound as exc:
            error, status = str(exc), 404
    return page(request, "memory.html", status, apps=apps, app_name=app_name, user_id=user_id, memories=memories,
                **({"error": error} if error else {}), **context)


@router.get("/memory")
async def memory(request: Request) -> Response:
    return await _memory_page(request, request.query_params.get("app", ""), request.query_params.get("user_id", "").strip())


@router.post("/memory/delete")
async def memory_delete(request: Request) -> Response:
    values = await form(request)
    app_name, user_id = values.get("app", ""), values.get("user_id", "")
    memory_id = _int(values.get("memory_id")) if values.get("memory_id") else None
    store = _store(request)
    try:
        app = await run(app_store.get_app, store, app_name)
    except app_store.AppNotFound as exc:
        return await _memory_page(request, "", "", 404, error=str(exc))
    deleted = await run(memory_store.delete_memories, store, user_id, app_id=app.id, memory_id=memory_id)
    query = urlencode({"app": app_name, "user_id": user_id,
                       "done": f"deleted {deleted} memor{'y' if deleted == 1 else 'ies'}"})
    return RedirectResponse(f"{PREFIX}/memory?{query}", status_code=303)


# --- fine-tuning -----------------------------------------------------------------------------

async def _finetune_page(request: Request, status: int = 200, **context) -> Response:
    store = _store(request)
    return page(request, "finetune.html", status, datasets=await run(console_store.list_datasets, store),
                jobs=await run(request.app.state.console_jobs.jobs), train_fields=job_domain.train_inputs(),
                **context)


@router.get("/finetune")
async def finetune(request: Request) -> Response:
    return await _finetune_page(request)


@router.post("/finetune/datasets")
async def dataset_upload(request: Request) -> Response:
    data = await request.form()
    upload = data.get("file")
    if upload is None or isinstance(upload, str):
        return await _finetune_page(request, 400, error="choose a JSONL file to upload")
    content = await upload.read()
    try:
        dataset = await run(job_domain.add_dataset, _store(request), upload.filename or "data.jsonl", content)
    except DataError as exc:
        return await _finetune_page(request, 400, problems=exc.problems, problem_file=exc.path,
                                    error=f"{exc.path}: {len(exc.problems)} bad line(s); nothing was kept")
    return RedirectResponse(f"{PREFIX}/finetune?{urlencode({'done': f'uploaded {dataset.name}: {dataset.conversations} conversations'})}", status_code=303)


@router.post("/finetune/jobs")
async def job_start(request: Request) -> Response:
    values = await form(request)
    try:
        job = await run(request.app.state.console_jobs.start_training, values.get("name", ""),
                        _int(values.get("dataset"), -1), values)
    except ValueError as exc:  # bad name or config, JobExists
        return await _finetune_page(request, 400, error=str(exc), values=values)
    return RedirectResponse(f"{PREFIX}/finetune/jobs/{job.id}", status_code=303)


async def _job_or_404(request: Request, job_id: int):
    return await run(request.app.state.console_jobs.job, job_id)


@router.get("/finetune/jobs/{job_id}")
async def job_page(job_id: int, request: Request) -> Response:
    job = await _job_or_404(request, job_id)
    if job is None:
        return page(request, "not_found.html", 404, error=f"no job {job_id}")
    return page(request, "job.html", job=job, datasets=await run(console_store.list_datasets, _store(request)),
                progress=job_domain.progress(job))


@router.get("/api/jobs/{job_id}")
async def job_json(job_id: int, request: Request) -> Response:
    job = await _job_or_404(request, job_id)
    if job is None:
        return JSONResponse({"error": f"no job {job_id}"}, status_code=404)
    return JSONResponse({"id": job.id, "name": job.name, "status": job.status, "error": job.error,
                         "eval_status": job.eval_status, "eval_result": job.eval_result, "service": job.service,
                         **await run(job_domain.progress, job)})


@router.post("/finetune/jobs/{job_id}/{action}")
async def job_action(job_id: int, action: str, request: Request) -> Response:
    values = await form(request)
    runner = request.app.state.console_jobs
    job = await _job_or_404(request, job_id)
    if job is None:
        return page(request, "not_found.html", 404, error=f"no job {job_id}")
    try:
        if action == "cancel":
            await run(runner.cancel, job_id)
            message = "cancelled"
        elif action == "eval":
            await run(runner.start_eval, job_id, _int(values.get("dataset")))
            message = "evaluation started"
        elif action == "publish":
            if job.status != "succeeded":
                raise ValueError("only a finished job can be published")
            api_path = values.get("api_path") or job.name
            await run(publishing.publish, _store(request), api_path, model="default", adapter=job.out_dir,
                      profile=values.get("profile") or DEFAULT_PROFILE, safety=values.get("safety") or "default",
                      **_limits(values))
            await run(console_store.update_job, _store(request), job_id, service=api_path)
            message = f"published at {api_path}"
        else:
            return page(request, "not_found.html", 404, error=f"no action {action!r}")
    except ValueError as exc:
        job = await _job_or_404(request, job_id)
        return page(request, "job.html", 400, job=job, datasets=await run(console_store.list_datasets, _store(request)),
                    progress=job_domain.progress(job), error=str(exc))
    return done(f"/finetune/jobs/{job_id}", message)


# --- metrics ---------------------------------------------------------------------------------

@router.get("/metrics")
async def metrics_page(request: Request) -> Response:
    return page(request, "metrics.html", health=metrics_view.engine_health(request.app.state.engines),
                services=await run(service_store.list_services, _store(request)))


@router.get("/api/metrics")
async def metrics_json(request: Request) -> Response:
    snap = await run(metrics_view.snapshot, _store(request), request.app.state.engines)
    return JSONResponse({**snap, "engines": metrics_view.engine_health(request.app.state.engines)})


# --- wiring ----------------------------------------------------------------------------------

async def _refusal(request: Request, exc: ConsoleRefusal) -> Response:
    wants_json = request.url.path.startswith(f"{PREFIX}/api/") or "application/json" in request.headers.get("accept", "")
    if wants_json:
        return JSONResponse({"error": exc.message}, status_code=exc.status)
    return page(request, "signin.html", exc.status, error=exc.message)


def install(app: FastAPI) -> None:
    """Mount the console on the app: pages, JSON API, static files, and the refusal handler."""
    app.include_router(public)
    app.include_router(router)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=str(_package / "static")), name="console-static")
    app.add_exception_handler(ConsoleRefusal, _refusal)


def console_routes() -> list[tuple[str, str]]:
    """(method, path) of every signed-in route, for the tests that check each refuses strangers."""
    return [(method, route.path) for route in router.routes for method in sorted(route.methods)]

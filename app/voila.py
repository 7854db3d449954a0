"""Voilà's settings for `make app`, read from the working folder (the Makefile runs Voilà in app/).

Each visitor gets a kernel of their own (600-780 MB, mostly torch: docs/results.md, "The drawing-pad app").
Two things end it once the page is gone.
"""

c = get_config()  # noqa: F821 (traitlets provides it)

# The template next to this file (JUPYTER_PATH=app/jupyter): Voilà's lab template without the Font
# Awesome stylesheets it would fetch from a CDN, so the page requests nothing from other hosts.
c.VoilaConfiguration.template = "digits-app"
c.VoilaConfiguration.theme = "light"
c.VoilaConfiguration.show_tracebacks = False
c.Voila.ip = "127.0.0.1"  # this machine only
c.Voila.port = 8866


def set_xsrf_cookie(handler, notebook, cwd):
    """Closing or leaving the page makes Voilà's page ask the server to shut its kernel down (a POST
    sent on `beforeunload`, carrying the `_xsrf` cookie as its form field). Voilà 0.5 never sets that
    cookie, so the server refuses the POST (403 "'_xsrf' argument missing") and the kernel lives on.
    Reading the handler's token sets the cookie on the page's response, before Voilà streams it."""
    _ = handler.xsrf_token  # the property sets the cookie when the request has none
    return None  # the notebook unchanged


c.VoilaConfiguration.prelaunch_hook = set_xsrf_cookie

# A kernel whose page vanished without saying so (a crashed browser, a lost network, a sleeping
# laptop) is shut down after 30 s without activity, checked every 10 s: within 40 s. A kernel with
# an open page is never culled, however long its visitor pauses.
c.MappingKernelManager.cull_idle_timeout = 30
c.MappingKernelManager.cull_interval = 10
c.MappingKernelManager.cull_connected = False

"""The protocols the server speaks, as plug-ins (service.api.plugin). The first answers for every path
that no other one owns; a new protocol is a package and one entry here."""

from service.api.kserve.routes import protocol as kserve
from service.api.kserve_grpc.server import protocol as kserve_grpc
from service.api.native.routes import protocol as native
from service.api.openai.routes import protocol as openai
from service.api.plugin import Protocol

PROTOCOLS: tuple[Protocol, ...] = (native, openai, kserve, kserve_grpc)

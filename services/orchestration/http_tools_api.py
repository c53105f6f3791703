"""CreateHttpTool, GetHttpTool, ListHttpTools, DeleteHttpTool."""

from __future__ import annotations

from typing import Any

import grpc

from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.orchestration.v1 import orchestration_pb2_grpc as pb_grpc
from callisto.services.common.errors import InvalidArgument
from callisto.services.orchestration.http_tools import HttpTools

Context = grpc.aio.ServicerContext[Any, Any]


class HttpToolsRpc(pb_grpc.OrchestrationServiceServicer):
    def __init__(self, http_tools: HttpTools) -> None:
        self._http_tools = http_tools

    async def CreateHttpTool(
        self, request: pb.CreateHttpToolRequest, context: Context
    ) -> pb.CreateHttpToolResponse:
        if not request.HasField("http_tool"):
            raise InvalidArgument.field("http_tool", "is required")
        created = await self._http_tools.create(request.http_tool, request.http_tool_id)
        return pb.CreateHttpToolResponse(http_tool=created)

    async def GetHttpTool(
        self, request: pb.GetHttpToolRequest, context: Context
    ) -> pb.GetHttpToolResponse:
        return pb.GetHttpToolResponse(http_tool=await self._http_tools.get(request.name))

    async def ListHttpTools(
        self, request: pb.ListHttpToolsRequest, context: Context
    ) -> pb.ListHttpToolsResponse:
        tools, token = await self._http_tools.list_tools(request.page_size, request.page_token)
        return pb.ListHttpToolsResponse(http_tools=tools, next_page_token=token)

    async def DeleteHttpTool(
        self, request: pb.DeleteHttpToolRequest, context: Context
    ) -> pb.DeleteHttpToolResponse:
        await self._http_tools.delete(request.name)
        return pb.DeleteHttpToolResponse()

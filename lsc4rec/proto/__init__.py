"""Wire format of the cloud's gRPC candidate service (``candidate_service.proto``) and its generated modules.

``candidate_service_pb2`` holds the messages, ``candidate_service_pb2_grpc`` the stub and servicer base.
Both are generated (see ``README.md`` here) and committed, so grpcio-tools is not a runtime dependency.
"""

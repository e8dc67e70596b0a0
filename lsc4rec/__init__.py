"""lsc4rec: federated, device–cloud collaborative sequential recommendation on Flower."""

from lsc4rec.logs import quiet_third_party_loggers

# Every process that runs this package (entry points, ServerApp, each ClientApp) keeps library chatter out.
quiet_third_party_loggers()

// The OpenTelemetry SDK for Node with its standard HTTP instrumentation, preloaded into a service
// that is otherwise unchanged:
//
//   OTEL_SERVICE_NAME=shop OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=http://127.0.0.1:4318/v1/traces \
//     node --require ./otel/instrument.js workload.js ...
//
// Everything else is the SDK's standard configuration from the environment (OTEL_BSP_*,
// OTEL_TRACES_SAMPLER, ...), as in any deployment.
'use strict';
const { NodeSDK } = require('@opentelemetry/sdk-node');
const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-proto');
const { HttpInstrumentation } = require('@opentelemetry/instrumentation-http');

const sdk = new NodeSDK({
  traceExporter: new OTLPTraceExporter(),
  instrumentations: [new HttpInstrumentation()],
});
sdk.start();
const stop = () => sdk.shutdown().finally(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

package org.cdsservice.test;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.context.support.IValidationSupport;
import ca.uhn.fhir.jpa.api.config.JpaStorageSettings;
import ca.uhn.fhir.jpa.api.dao.IFhirSystemDao;
import ca.uhn.fhir.jpa.provider.JpaCapabilityStatementProvider;
import ca.uhn.fhir.jpa.provider.JpaSystemProvider;
import ca.uhn.fhir.jpa.provider.ValueSetOperationProvider;
import ca.uhn.fhir.jpa.search.DatabaseBackedPagingProvider;
import ca.uhn.fhir.rest.api.EncodingEnum;
import ca.uhn.fhir.rest.server.RestfulServer;
import ca.uhn.fhir.rest.server.provider.ResourceProviderFactory;
import ca.uhn.fhir.rest.server.util.ISearchParamRegistry;
import org.eclipse.jetty.ee10.servlet.ServletContextHandler;
import org.eclipse.jetty.ee10.servlet.ServletHolder;
import org.eclipse.jetty.server.Server;
import org.eclipse.jetty.server.ServerConnector;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.springframework.context.annotation.AnnotationConfigApplicationContext;

import java.io.IOException;
import java.lang.management.ManagementFactory;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.time.Duration;
import java.util.Locale;
import java.util.concurrent.CountDownLatch;

/**
 * Starts an in-memory HAPI FHIR R4 JPA server at http://127.0.0.1:PORT/fhir.
 *
 * <pre>
 *   java -Dhapi.port=8080 -jar target/hapi-test-server.jar
 *   java -jar target/hapi-test-server.jar 8080        (an argument wins over -Dhapi.port)
 * </pre>
 *
 * Port 0 picks a free port; the chosen port is printed in the "started" line.
 * SIGTERM/SIGINT stop Jetty and then the Spring context.
 */
public final class HapiTestServer {

	private static final Logger LOG = LoggerFactory.getLogger(HapiTestServer.class);
	private static final String HOST = "127.0.0.1";

	private final int requestedPort;
	private AnnotationConfigApplicationContext spring;
	private Server jetty;

	public HapiTestServer(int port) {
		this.requestedPort = port;
	}

	public static void main(String[] args) throws Exception {
		int port = args.length > 0 ? Integer.parseInt(args[0].trim()) : HapiTestServerConfig.Settings.port();
		HapiTestServer server = new HapiTestServer(port);
		CountDownLatch stopped = new CountDownLatch(1);
		Runtime.getRuntime().addShutdownHook(new Thread(() -> {
			server.stop();
			stopped.countDown();
		}, "hapi-test-server-shutdown"));
		try {
			server.start();
		} catch (Throwable t) {
			LOG.error("HAPI FHIR test server failed to start", t);
			// halt: a half-started Spring context can keep non-daemon threads alive
			Runtime.getRuntime().halt(1);
		}
		server.warmUp();
		double secs = ManagementFactory.getRuntimeMXBean().getUptime() / 1000.0;
		LOG.info(String.format(Locale.ROOT, "HAPI FHIR test server started on port %d in %.1f s (base http://%s:%d/fhir)",
				server.getPort(), secs, HOST, server.getPort()));
		server.jetty.join();
		stopped.await();
	}

	public void start() throws Exception {
		failFastIfPortTaken();
		spring = new AnnotationConfigApplicationContext(HapiTestServerConfig.class);

		FhirContext fhirContext = spring.getBean(FhirContext.class);
		JpaStorageSettings storageSettings = spring.getBean(JpaStorageSettings.class);

		DatabaseBackedPagingProvider paging = spring.getBean(DatabaseBackedPagingProvider.class);
		paging.setDefaultPageSize(HapiTestServerConfig.Settings.pageSize());
		paging.setMaximumPageSize(HapiTestServerConfig.Settings.maxPageSize());

		RestfulServer fhir = new RestfulServer(fhirContext);
		fhir.setDefaultResponseEncoding(EncodingEnum.JSON);
		fhir.setDefaultPrettyPrint(false);
		fhir.registerProviders(spring.getBean(ResourceProviderFactory.class).createProviders());
		fhir.registerProvider(spring.getBean(JpaSystemProvider.class)); // transaction/batch Bundles
		fhir.registerProvider(spring.getBean(ValueSetOperationProvider.class)); // ValueSet $expand, $validate-code
		fhir.setPagingProvider(paging);
		@SuppressWarnings("unchecked")
		IFhirSystemDao<?, ?> systemDao = spring.getBean(IFhirSystemDao.class);
		fhir.setServerConformanceProvider(new JpaCapabilityStatementProvider(
				fhir,
				systemDao,
				storageSettings,
				spring.getBean(ISearchParamRegistry.class),
				spring.getBean(IValidationSupport.class)));

		jetty = new Server();
		ServerConnector http = new ServerConnector(jetty);
		http.setHost(HOST);
		http.setPort(requestedPort);
		jetty.addConnector(http);
		ServletContextHandler context = new ServletContextHandler();
		context.setContextPath("/");
		ServletHolder holder = new ServletHolder("fhir", fhir);
		holder.setInitOrder(1); // initialise the RestfulServer at start, not on the first request
		context.addServlet(holder, "/fhir/*");
		jetty.setHandler(context);
		jetty.setStopTimeout(5000);
		jetty.start();
	}

	/** Spring takes ~10 s to start; don't spend that only to find the port is in use. */
	private void failFastIfPortTaken() throws IOException {
		if (requestedPort == 0) {
			return;
		}
		try (ServerSocket probe = new ServerSocket()) {
			probe.setReuseAddress(true);
			probe.bind(new InetSocketAddress(HOST, requestedPort));
		} catch (IOException e) {
			throw new IOException("Port " + requestedPort + " on " + HOST + " is not available: " + e.getMessage(), e);
		}
	}

	/**
	 * The first /metadata request builds the CapabilityStatement (about 1-2 s);
	 * do it here so the "started" line really means "ready".
	 */
	void warmUp() {
		try {
			HttpResponse<Void> r = HttpClient.newHttpClient().send(
					HttpRequest.newBuilder(URI.create("http://" + HOST + ":" + getPort() + "/fhir/metadata"))
							.timeout(Duration.ofSeconds(60))
							.build(),
					HttpResponse.BodyHandlers.discarding());
			if (r.statusCode() != 200) {
				LOG.warn("Warm-up GET /fhir/metadata returned HTTP {}", r.statusCode());
			}
		} catch (Exception e) {
			LOG.warn("Warm-up GET /fhir/metadata failed", e);
		}
	}

	public int getPort() {
		return ((ServerConnector) jetty.getConnectors()[0]).getLocalPort();
	}

	public synchronized void stop() {
		try {
			if (jetty != null) {
				jetty.stop();
			}
		} catch (Exception e) {
			LOG.warn("Error stopping Jetty", e);
		}
		if (spring != null) {
			spring.close();
			spring = null;
		}
	}
}

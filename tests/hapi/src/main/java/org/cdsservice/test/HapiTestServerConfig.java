package org.cdsservice.test;

import ca.uhn.fhir.batch2.jobs.config.Batch2JobsConfig;
import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.jpa.api.config.JpaStorageSettings;
import ca.uhn.fhir.jpa.api.config.ThreadPoolFactoryConfig;
import ca.uhn.fhir.jpa.batch2.JpaBatch2Config;
import ca.uhn.fhir.jpa.binary.api.IBinaryStorageSvc;
import ca.uhn.fhir.jpa.binstore.MemoryBinaryStorageSvcImpl;
import ca.uhn.fhir.jpa.config.HapiJpaConfig;
import ca.uhn.fhir.jpa.config.r4.JpaR4Config;
import ca.uhn.fhir.jpa.config.util.HapiEntityManagerFactoryUtil;
import ca.uhn.fhir.jpa.model.config.PartitionSettings;
import ca.uhn.fhir.jpa.model.config.SubscriptionSettings;
import ca.uhn.fhir.jpa.model.dialect.HapiFhirH2Dialect;
import ca.uhn.fhir.jpa.subscription.channel.config.SubscriptionChannelConfig;
import jakarta.persistence.EntityManagerFactory;
import org.apache.commons.dbcp2.BasicDataSource;
import org.springframework.beans.factory.config.ConfigurableListableBeanFactory;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;
import org.springframework.context.annotation.Import;
import org.springframework.context.annotation.Primary;
import org.springframework.orm.jpa.JpaTransactionManager;
import org.springframework.orm.jpa.LocalContainerEntityManagerFactoryBean;

import javax.sql.DataSource;
import java.time.Duration;
import java.util.Properties;
import java.util.UUID;

/**
 * Spring wiring for an in-memory (H2) HAPI FHIR R4 JPA server.
 *
 * <p>The bean list follows what HAPI's own JPA tests set up (TestR4Config /
 * TestJPAConfig in hapi-fhir-jpaserver-test-utilities): the R4 and generic JPA
 * configs are imported and this class supplies the beans HAPI expects the
 * application to own (data source, entity manager factory, transaction manager,
 * storage/partition/subscription settings, binary storage). Nothing here
 * contacts a network: no remote terminology server, no package installation;
 * Hibernate Search runs on an in-memory (local-heap) Lucene index, which HAPI's
 * own terminology service needs for CodeSystem $subsumes.
 *
 * <p>All tunables are JVM system properties, read once at start-up; see
 * {@link Settings}.
 */
@Configuration
@Import({
	JpaR4Config.class,
	HapiJpaConfig.class,
	JpaBatch2Config.class,
	Batch2JobsConfig.class,
	// thread pools for transaction processing
	ThreadPoolFactoryConfig.class,
	// in-memory (LinkedBlockingQueue) message broker; Batch2 needs one
	SubscriptionChannelConfig.class
})
public class HapiTestServerConfig {

	/** Values taken from -D system properties (with test-friendly defaults). */
	static final class Settings {
		static int port() {
			return Integer.getInteger("hapi.port", 8080);
		}

		static int pageSize() {
			return Integer.getInteger("hapi.pageSize", 5);
		}

		static int maxPageSize() {
			return Integer.getInteger("hapi.maxPageSize", 10);
		}

		/** 0 (default) turns search-result reuse off; N &gt; 0 reuses identical searches for N ms. */
		static long reuseCachedSearchResultsMillis() {
			return Long.getLong("hapi.reuseCachedSearchResultsMillis", 0L);
		}

		/** How long a search (and therefore its _getpages links) lives; HAPI's default is one hour. */
		static Long expireSearchResultsMillis() {
			return Long.getLong("hapi.expireSearchResultsMillis");
		}

		/** Database connections; small is fine for a test server. */
		static int dbPoolSize() {
			return Integer.getInteger("hapi.dbPoolSize", 10);
		}
	}

	@Bean
	public JpaStorageSettings storageSettings() {
		JpaStorageSettings s = new JpaStorageSettings();
		long reuse = Settings.reuseCachedSearchResultsMillis();
		// null = never look for a cached search; HAPI's own default is 60000 ms.
		s.setReuseCachedSearchResultsForMillis(reuse > 0 ? reuse : null);
		Long expire = Settings.expireSearchResultsMillis();
		if (expire != null) {
			s.setExpireSearchResultsAfterMillis(expire);
		}
		// Handy for tests that reset data between cases.
		s.setAllowMultipleDelete(true);
		s.setExpungeEnabled(true);
		s.setDeleteExpungeEnabled(true);
		// Keep the server self-contained.
		s.setAllowExternalReferences(false);
		return s;
	}

	@Bean
	public PartitionSettings partitionSettings() {
		return new PartitionSettings();
	}

	@Bean
	public SubscriptionSettings subscriptionSettings() {
		return new SubscriptionSettings();
	}

	@Bean
	public IBinaryStorageSvc binaryStorageSvc() {
		return new MemoryBinaryStorageSvcImpl();
	}

	@Bean(destroyMethod = "close")
	public BasicDataSource dataSource() {
		BasicDataSource ds = new BasicDataSource();
		ds.setDriverClassName("org.h2.Driver");
		// A unique name so two servers in one JVM never share a database;
		// DB_CLOSE_DELAY=-1 keeps the database for the life of the JVM.
		ds.setUrl("jdbc:h2:mem:hapi-" + UUID.randomUUID() + ";DB_CLOSE_DELAY=-1");
		ds.setUsername("sa");
		ds.setPassword("");
		ds.setMaxTotal(Settings.dbPoolSize());
		ds.setMaxWait(Duration.ofSeconds(30));
		return ds;
	}

	@Bean
	public LocalContainerEntityManagerFactoryBean entityManagerFactory(
			ConfigurableListableBeanFactory beanFactory,
			FhirContext fhirContext,
			JpaStorageSettings storageSettings,
			DataSource dataSource) {
		LocalContainerEntityManagerFactoryBean emf =
				HapiEntityManagerFactoryUtil.newEntityManagerFactory(beanFactory, fhirContext, storageSettings);
		emf.setPersistenceUnitName("HAPI_TEST_PU");
		emf.setDataSource(dataSource);
		Properties jpa = new Properties();
		jpa.put("hibernate.dialect", HapiFhirH2Dialect.class.getName());
		jpa.put("hibernate.hbm2ddl.auto", "update");
		jpa.put("hibernate.format_sql", "false");
		jpa.put("hibernate.show_sql", "false");
		// Hibernate Search on an in-memory Lucene index: HAPI's terminology service needs it for
		// CodeSystem $subsumes (a concept's ancestors are indexed fields).
		jpa.put("hibernate.search.enabled", "true");
		jpa.put("hibernate.search.backend.type", "lucene");
		jpa.put("hibernate.search.backend.directory.type", "local-heap");
		jpa.put("hibernate.search.backend.lucene_version", "LUCENE_CURRENT");
		jpa.put("hibernate.search.backend.analysis.configurer",
				"ca.uhn.fhir.jpa.search.HapiHSearchAnalysisConfigurers$HapiLuceneAnalysisConfigurer");
		emf.setJpaProperties(jpa);
		return emf;
	}

	@Bean
	@Primary
	public JpaTransactionManager transactionManager(EntityManagerFactory entityManagerFactory) {
		JpaTransactionManager tm = new JpaTransactionManager();
		tm.setEntityManagerFactory(entityManagerFactory);
		return tm;
	}
}

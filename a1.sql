--
-- PostgreSQL database dump
--


-- Dumped from database version 15.18 (Debian 15.18-0+deb12u1)
-- Dumped by pg_dump version 15.18 (Debian 15.18-0+deb12u1)

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

--
-- Name: public; Type: SCHEMA; Schema: -; Owner: regress_quoted  \" role
--

-- *not* creating schema, since initdb creates it


ALTER SCHEMA public OWNER TO "regress_quoted  \"" role";

--
-- Name: s; Type: SCHEMA; Schema: -; Owner: back\slash
--

CREATE SCHEMA s;


ALTER SCHEMA s OWNER TO "back\slash";

SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: t; Type: TABLE; Schema: public; Owner: postgres
--

CREATE TABLE public.t (
    a integer,
    b integer
);


ALTER TABLE public.t OWNER TO postgres;

--
-- Name: TABLE t; Type: ACL; Schema: public; Owner: postgres
--

GRANT SELECT ON TABLE public.t TO "regress_quoted  \"" role";
GRANT INSERT ON TABLE public.t TO "back\slash" WITH GRANT OPTION;
SET SESSION AUTHORIZATION "back\slash";
GRANT INSERT ON TABLE public.t TO "regress_quoted  \"" role";
RESET SESSION AUTHORIZATION;


--
-- Name: COLUMN t.b; Type: ACL; Schema: public; Owner: postgres
--

GRANT UPDATE(b) ON TABLE public.t TO "regress_quoted  \"" role";


--
-- Name: DEFAULT PRIVILEGES FOR TABLES; Type: DEFAULT ACL; Schema: -; Owner: back\slash
--

ALTER DEFAULT PRIVILEGES FOR ROLE "back\slash" GRANT SELECT ON TABLES  TO "regress_quoted  \"" role";


--
-- PostgreSQL database dump complete
--



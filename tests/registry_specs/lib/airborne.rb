# A stand-in for the `airborne` gem (github.com/brooklynDev/airborne), which
# the reTHINK Domain Registry's API specs in ../spec/ require and which is not
# packaged by Debian: the part of its API those specs use, on rest-client and
# RSpec, written for ninefold's tests (not a copy of airborne's code).
#
#   get/put/post/delete(url, [body], [headers])   relative to base_url unless the
#                                                 url has a scheme or a host
#   response, json_body                           the last answer (JSON, symbol keys)
#   expect_status(code)
#   expect_json([path,] hash)      every expected key present with that value
#   expect_json_keys([path,] keys) those keys present (others allowed)
#   expect_json_sizes([path,] n)   the object (or array) at path has n entries
#   expect_json_types([path,] hash) :string, :int, :integer, :float, :boolean,
#                                  :array, :object, :null, :array_of_<type>s
#   Airborne.configure { |c| c.base_url = ...; c.headers = {...} }
#
# As in airborne, a body that is a Hash is sent as JSON with
# `Content-Type: application/json`, and an HTTP error status is an answer,
# not an exception.

require 'json'
require 'rest-client'
require 'rspec'

module Airborne
  class InvalidJsonError < StandardError; end
  class PathError < StandardError; end

  def self.configure
    RSpec.configure { |config| yield config }
  end

  def self.configuration
    RSpec.configuration
  end

  def get(url, headers = nil)
    request(:get, url, nil, headers)
  end

  def delete(url, body = nil, headers = nil)
    request(:delete, url, body, headers)
  end

  def post(url, body = nil, headers = nil)
    request(:post, url, body, headers)
  end

  def put(url, body = nil, headers = nil)
    request(:put, url, body, headers)
  end

  def patch(url, body = nil, headers = nil)
    request(:patch, url, body, headers)
  end

  def response
    @response
  end

  def body
    @response && @response.body
  end

  def json_body
    raise InvalidJsonError, 'no request made yet' if @response.nil?

    JSON.parse(@response.body, symbolize_names: true)
  rescue JSON::ParserError
    raise InvalidJsonError, "Api request returned invalid json: #{@response.body[0, 200].inspect}"
  end

  def expect_status(code)
    expect(response.code).to eq(code.to_i)
  end

  def expect_json(*args)
    with_path(args) { |expected, actual| compare_json(expected, actual) }
  end

  def expect_json_keys(*args)
    with_path(args) do |keys, actual|
      expect(actual).to be_a(Hash), "expected an object, got #{actual.inspect}"
      expect(actual.keys).to include(*Array(keys).map(&:to_sym))
    end
  end

  def expect_json_sizes(*args)
    with_path(args) do |size, actual|
      if size.is_a?(Hash)
        size.each { |key, n| expect(value_at(actual, key).size).to eq(n) }
      else
        expect(actual.size).to eq(size)
      end
    end
  end

  def expect_json_types(*args)
    with_path(args) { |types, actual| check_types(types, actual) }
  end

  private

  def request(method, url, body, headers)
    headers = { content_type: :json }.merge(Airborne.configuration.headers || {}).merge(headers || {})
    payload = body.is_a?(Hash) || body.is_a?(Array) ? body.to_json : (body || '')
    @response =
      begin
        if %i[post put patch].include?(method)
          RestClient.send(method, full_url(url), payload, headers)
        elsif method == :delete && body
          RestClient::Request.execute(method: :delete, url: full_url(url), payload: payload, headers: headers)
        else
          RestClient.send(method, full_url(url), headers)
        end
      rescue RestClient::ExceptionWithResponse => e
        raise if e.response.nil?

        e.response
      end
  end

  def full_url(url)
    return url if url =~ %r{\A\w+://} || url !~ %r{\A/}

    (Airborne.configuration.base_url || '') + url
  end

  def with_path(args)
    if args.length == 2
      yield args[1], value_at(json_body, args[0])
    else
      yield args[0], json_body
    end
  end

  def value_at(json, path)
    path.to_s.split('.').reduce(json) do |node, part|
      value =
        if node.is_a?(Array) && part =~ /\A\d+\z/
          node[part.to_i]
        elsif node.is_a?(Hash)
          node[part.to_sym]
        end
      raise PathError, "Expected #{node.class} to be an object with property #{part}" if value.nil?

      value
    end
  end

  def compare_json(expected, actual)
    unless expected.is_a?(Hash)
      return expected.is_a?(Regexp) ? expect(actual.to_s).to(match(expected)) : expect(actual).to(eq(expected))
    end

    expect(actual).to be_a(Hash), "expected an object, got #{actual.inspect}"
    expected.each do |key, value|
      expect(actual).to have_key(key.to_sym), "Key #{key} is not present in #{actual.keys}"
      if value.is_a?(Hash)
        compare_json(value, actual[key.to_sym])
      elsif value.is_a?(Proc)
        value.call(actual[key.to_sym])
      elsif value.is_a?(Regexp)
        expect(actual[key.to_sym].to_s).to match(value)
      else
        expect(actual[key.to_sym]).to eq(value)
      end
    end
  end

  TYPES = {
    string: [String],
    int: [Integer],
    integer: [Integer],
    float: [Float, Integer],
    boolean: [TrueClass, FalseClass],
    array: [Array],
    object: [Hash],
    null: [NilClass]
  }.freeze

  def check_types(types, actual)
    return types.call(actual) if types.is_a?(Proc)

    types.each do |key, type|
      expect(actual).to have_key(key.to_sym), "Expected #{key} to be present in #{actual.inspect}"
      value = actual[key.to_sym]
      if type.is_a?(Hash)
        check_types(type, value)
      elsif type.to_s.start_with?('array_of_')
        element = type.to_s.sub('array_of_', '').chomp('s').to_sym
        expect(value).to be_a(Array), "Expected #{key} to be an array, got #{value.class}"
        value.each do |item|
          expect(TYPES.fetch(element)).to include(item.class), "Expected #{key} to hold #{element}s, got #{item.inspect}"
        end
      else
        expect(TYPES.fetch(type.to_sym)).to include(value.class), "Expected #{key} to be of type #{type}, got #{value.class}"
      end
    end
  end
end

RSpec.configure do |config|
  config.add_setting :base_url
  config.add_setting :headers
  config.include Airborne
end

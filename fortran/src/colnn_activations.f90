!> Activation functions, applied in place over a (features, columns) block. The same type serves
!> the activation inside a Dense layer and the standalone activation layers.
module colnn_activations
  use colnn_kinds, only: wp, dp, i8
  use colnn_status
  use colnn_strings, only: real_to_str, next_token, parse_real_dp, parse_logical
  implicit none
  private

  public :: activation_t, parse_activation

  integer, parameter :: A_LINEAR = 0, A_RELU = 1, A_RELU6 = 2, A_LEAKY = 3, A_ELU = 4, &
                        A_SELU = 5, A_GELU = 6, A_SWISH = 7, A_SIGMOID = 8, &
                        A_HARD_SIGMOID = 9, A_HARD_SILU = 10, A_TANH = 11, A_SOFTPLUS = 12, &
                        A_SOFTSIGN = 13, A_EXPONENTIAL = 14, A_MISH = 15, A_SOFTMAX = 16, &
                        A_LOG_SOFTMAX = 17

  real(wp), parameter :: SELU_ALPHA = real(1.6732632423543772848170429916717_dp, wp)
  real(wp), parameter :: SELU_SCALE = real(1.0507009873554804934193349852946_dp, wp)
  real(wp), parameter :: SQRT_HALF = real(0.70710678118654752440084436210485_dp, wp)
  real(wp), parameter :: SQRT_2_OVER_PI = real(0.79788456080286535587989211986876_dp, wp)

  type :: activation_t
    integer :: kind = A_LINEAR
    character(len=16) :: name = 'linear'
    real(wp) :: negative_slope = 0       !< relu, leaky_relu
    real(wp) :: max_value = 0            !< relu (when has_max_value)
    logical :: has_max_value = .false.
    real(wp) :: threshold = 0            !< relu
    real(wp) :: alpha = 1                !< elu
    logical :: approximate = .false.     !< gelu
    real(wp) :: slope = real(1.0_dp / 6, wp)      !< hard_sigmoid
    real(wp) :: offset = 0.5_dp          !< hard_sigmoid
  contains
    procedure :: apply => activation_apply
    procedure :: backward => activation_backward
    procedure :: spec => activation_spec
    procedure :: is_linear => activation_is_linear
  end type activation_t

contains

  pure logical function activation_is_linear(self)
    class(activation_t), intent(in) :: self
    activation_is_linear = self%kind == A_LINEAR
  end function activation_is_linear

  !> Parses 'NAME [key=value ...]' (see docs/model-format.md). Unknown names and parameters are
  !> errors: nothing falls back to a default activation.
  subroutine parse_activation(text, act, stat, errmsg)
    character(len=*), intent(in) :: text
    type(activation_t), intent(out) :: act
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    integer :: pos, first, last, eq
    character(len=:), allocatable :: name, key, val, seen
    real(dp) :: r
    logical :: ok, b

    stat = COLNN_OK
    errmsg = ''
    pos = 1
    call next_token(text, pos, first, last)
    if (last < first) then
      stat = COLNN_ERR_FORMAT; errmsg = 'empty activation'; return
    end if
    name = text(first:last)
    select case (name)
    case ('linear'); act%kind = A_LINEAR
    case ('relu'); act%kind = A_RELU
    case ('relu6'); act%kind = A_RELU6
    case ('leaky_relu'); act%kind = A_LEAKY; act%negative_slope = real(0.2_dp, wp)
    case ('elu'); act%kind = A_ELU
    case ('selu'); act%kind = A_SELU
    case ('gelu'); act%kind = A_GELU
    case ('swish', 'silu'); act%kind = A_SWISH; name = 'swish'
    case ('sigmoid'); act%kind = A_SIGMOID
    case ('hard_sigmoid'); act%kind = A_HARD_SIGMOID
    case ('hard_silu', 'hard_swish'); act%kind = A_HARD_SILU; name = 'hard_silu'
    case ('tanh'); act%kind = A_TANH
    case ('softplus'); act%kind = A_SOFTPLUS
    case ('softsign'); act%kind = A_SOFTSIGN
    case ('exponential'); act%kind = A_EXPONENTIAL
    case ('mish'); act%kind = A_MISH
    case ('softmax'); act%kind = A_SOFTMAX
    case ('log_softmax'); act%kind = A_LOG_SOFTMAX
    case default
      stat = COLNN_ERR_UNSUPPORTED
      errmsg = "unknown activation '"//name//"'"
      return
    end select
    act%name = name
    seen = ' '

    do
      call next_token(text, pos, first, last)
      if (last < first) exit
      eq = index(text(first:last), '=')
      if (eq <= 1 .or. first + eq - 1 == last) then
        stat = COLNN_ERR_FORMAT
        errmsg = "activation '"//name//"': parameter '"//text(first:last)//"' is not KEY=VALUE"
        return
      end if
      key = text(first:first + eq - 2)
      val = text(first + eq:last)
      if (index(seen, ' '//key//' ') > 0) then
        stat = COLNN_ERR_FORMAT
        errmsg = "activation '"//name//"': parameter '"//key//"' given twice"
        return
      end if
      seen = seen//key//' '
      ok = .true.
      select case (name//':'//key)
      case ('relu:negative_slope', 'leaky_relu:negative_slope')
        call parse_real_dp(val, r, ok); act%negative_slope = real(r, wp)
      case ('relu:threshold')
        call parse_real_dp(val, r, ok); act%threshold = real(r, wp)
      case ('relu:max_value')
        if (val == 'none') then
          act%has_max_value = .false.
        else
          call parse_real_dp(val, r, ok); act%max_value = real(r, wp); act%has_max_value = .true.
        end if
      case ('elu:alpha')
        call parse_real_dp(val, r, ok); act%alpha = real(r, wp)
      case ('gelu:approximate')
        call parse_logical(val, b, ok); act%approximate = b
      case ('hard_sigmoid:slope')
        call parse_real_dp(val, r, ok); act%slope = real(r, wp)
      case ('hard_sigmoid:offset')
        call parse_real_dp(val, r, ok); act%offset = real(r, wp)
      case default
        stat = COLNN_ERR_UNSUPPORTED
        errmsg = "activation '"//name//"' has no parameter '"//key//"'"
        return
      end select
      if (.not. ok) then
        stat = COLNN_ERR_FORMAT
        errmsg = "activation '"//name//"': bad value '"//val//"' for '"//key//"'"
        return
      end if
    end do
  end subroutine parse_activation

  !> The text form written to model files, with every parameter explicit.
  function activation_spec(self) result(s)
    class(activation_t), intent(in) :: self
    character(len=:), allocatable :: s
    s = trim(self%name)
    select case (self%kind)
    case (A_RELU)
      s = s//' negative_slope='//real_to_str(self%negative_slope)
      if (self%has_max_value) then
        s = s//' max_value='//real_to_str(self%max_value)
      else
        s = s//' max_value=none'
      end if
      s = s//' threshold='//real_to_str(self%threshold)
    case (A_LEAKY)
      s = s//' negative_slope='//real_to_str(self%negative_slope)
    case (A_ELU)
      s = s//' alpha='//real_to_str(self%alpha)
    case (A_GELU)
      if (self%approximate) then
        s = s//' approximate=true'
      else
        s = s//' approximate=false'
      end if
    case (A_HARD_SIGMOID)
      s = s//' slope='//real_to_str(self%slope)//' offset='//real_to_str(self%offset)
    end select
  end function activation_spec

  !> exp(x) - 1 without cancellation for small |x| (Kahan's trick).
  elemental real(wp) function expm1(x)
    real(wp), intent(in) :: x
    real(wp) :: u
    u = exp(x)
    if (u == 1) then
      expm1 = x
    else if (u - 1 == -1) then
      expm1 = -1
    else
      expm1 = (u - 1) * x / log(u)
    end if
  end function expm1

  !> log(1 + exp(x)) evaluated without overflow or loss of small values.
  elemental real(wp) function softplus(x)
    real(wp), intent(in) :: x
    real(wp) :: y, u
    if (x > -log(epsilon(x))) then
      softplus = x
    else if (x < log(epsilon(x))) then
      softplus = exp(x)
    else
      y = exp(x)
      u = 1 + y
      if (u == 1) then
        softplus = y
      else
        softplus = log(u) * (y / (u - 1))
      end if
    end if
  end function softplus

  !> Branch-free so it vectorizes; exp(-x) = Inf for very negative x gives exactly 0.
  elemental real(wp) function sigmoid(x)
    real(wp), intent(in) :: x
    sigmoid = 1 / (1 + exp(-x))
  end function sigmoid

  !> Applies the activation in place to a(n, nc), column by column.
  subroutine activation_apply(self, n, nc, a)
    class(activation_t), intent(in) :: self
    integer, intent(in) :: n, nc
    real(wp), intent(inout) :: a(n, nc)
    integer :: i, j
    real(wp) :: m, s, t, x

    select case (self%kind)
    case (A_LINEAR)
    case (A_RELU)
      if (self%threshold == 0 .and. .not. self%has_max_value .and. self%negative_slope == 0) then
        a = max(a, 0.0_wp)
      else
        do j = 1, nc
          do i = 1, n
            x = a(i, j)
            if (self%threshold /= 0) then
              t = merge(x, 0.0_wp, x > self%threshold)
            else
              t = max(x, 0.0_wp)
            end if
            if (self%has_max_value) t = min(max(t, 0.0_wp), self%max_value)
            if (self%negative_slope /= 0) t = t - self%negative_slope * max(self%threshold - x, 0.0_wp)
            a(i, j) = t
          end do
        end do
      end if
    case (A_RELU6)
      a = min(max(a, 0.0_wp), 6.0_wp)
    case (A_LEAKY)
      ! branch-free (a branch per element mispredicts on random signs): exact for any slope
      s = self%negative_slope
      a = max(a, 0.0_wp) + s * min(a, 0.0_wp)
    case (A_ELU)
      s = self%alpha
      a = merge(a, s * expm1(a), a > 0)
    case (A_SELU)
      a = SELU_SCALE * merge(a, SELU_ALPHA * expm1(a), a > 0)
    case (A_GELU)
      if (self%approximate) then
        a = 0.5_wp * a * (1 + tanh(SQRT_2_OVER_PI * (a + 0.044715_wp * a**3)))
      else
        a = 0.5_wp * a * (1 + erf(a * SQRT_HALF))
      end if
    case (A_SWISH)
      a = a * sigmoid(a)
    case (A_SIGMOID)
      a = sigmoid(a)
    case (A_HARD_SIGMOID)
      a = min(max(self%slope * a + self%offset, 0.0_wp), 1.0_wp)
    case (A_HARD_SILU)
      a = a * min(max(a / 6 + 0.5_wp, 0.0_wp), 1.0_wp)
    case (A_TANH)
      a = tanh(a)
    case (A_SOFTPLUS)
      a = softplus(a)
    case (A_SOFTSIGN)
      a = a / (1 + abs(a))
    case (A_EXPONENTIAL)
      a = exp(a)
    case (A_MISH)
      a = a * tanh(softplus(a))
    case (A_SOFTMAX)
      do j = 1, nc
        m = maxval(a(:, j))
        a(:, j) = exp(a(:, j) - m)
        a(:, j) = a(:, j) / sum(a(:, j))
      end do
    case (A_LOG_SOFTMAX)
      do j = 1, nc
        m = maxval(a(:, j))
        s = log(sum(exp(a(:, j) - m)))
        a(:, j) = a(:, j) - m - s
      end do
    end select
  end subroutine activation_apply

  !> dz = f'(z) dy over a (n, nc) block, from the pre-activation z (and the output y = f(z),
  !> which softmax-type activations need). dz may not alias dy.
  subroutine activation_backward(self, n, nc, z, y, dy, dz)
    class(activation_t), intent(in) :: self
    integer, intent(in) :: n, nc
    real(wp), intent(in) :: z(n, nc), y(n, nc), dy(n, nc)
    real(wp), intent(out) :: dz(n, nc)
    real(wp), parameter :: INV_SQRT_2PI = real(0.39894228040143267793994605993438_dp, wp)
    real(wp) :: s, g, t, sp, inner
    integer :: i, j

    select case (self%kind)
    case (A_LINEAR)
      dz = dy
    case (A_RELU)
      do j = 1, nc
        do i = 1, n
          if (self%has_max_value .and. z(i, j) >= self%max_value) then
            dz(i, j) = 0
          else if (z(i, j) > self%threshold) then
            dz(i, j) = dy(i, j)
          else
            dz(i, j) = self%negative_slope * dy(i, j)
          end if
        end do
      end do
    case (A_RELU6)
      dz = merge(dy, 0.0_wp, z > 0 .and. z < 6)
    case (A_LEAKY)
      dz = merge(dy, self%negative_slope * dy, z > 0)
    case (A_ELU)
      dz = merge(dy, self%alpha * exp(min(z, 0.0_wp)) * dy, z > 0)
    case (A_SELU)
      dz = SELU_SCALE * merge(dy, SELU_ALPHA * exp(min(z, 0.0_wp)) * dy, z > 0)
    case (A_GELU)
      if (self%approximate) then
        do j = 1, nc
          do i = 1, n
            inner = SQRT_2_OVER_PI * (z(i, j) + 0.044715_wp * z(i, j)**3)
            t = tanh(inner)
            g = 0.5_wp * (1 + t) + 0.5_wp * z(i, j) * (1 - t * t) * SQRT_2_OVER_PI * &
                (1 + 3 * 0.044715_wp * z(i, j)**2)
            dz(i, j) = g * dy(i, j)
          end do
        end do
      else
        dz = (0.5_wp * (1 + erf(z * SQRT_HALF)) + z * INV_SQRT_2PI * exp(-0.5_wp * z * z)) * dy
      end if
    case (A_SWISH)
      do j = 1, nc
        do i = 1, n
          s = sigmoid(z(i, j))
          dz(i, j) = (s + z(i, j) * s * (1 - s)) * dy(i, j)
        end do
      end do
    case (A_SIGMOID)
      dz = y * (1 - y) * dy
    case (A_HARD_SIGMOID)
      t = 0
      dz = merge(self%slope * dy, 0.0_wp, self%slope * z + self%offset > 0 .and. &
                 self%slope * z + self%offset < 1)
    case (A_HARD_SILU)
      dz = (min(max(z / 6 + 0.5_wp, 0.0_wp), 1.0_wp) + merge(z / 6, 0.0_wp, z > -3 .and. z < 3)) * dy
    case (A_TANH)
      dz = (1 - y * y) * dy
    case (A_SOFTPLUS)
      dz = sigmoid(z) * dy
    case (A_SOFTSIGN)
      dz = dy / (1 + abs(z))**2
    case (A_EXPONENTIAL)
      dz = y * dy
    case (A_MISH)
      do j = 1, nc
        do i = 1, n
          sp = softplus(z(i, j))
          t = tanh(sp)
          dz(i, j) = (t + z(i, j) * (1 - t * t) * sigmoid(z(i, j))) * dy(i, j)
        end do
      end do
    case (A_SOFTMAX)
      do j = 1, nc
        dz(:, j) = y(:, j) * (dy(:, j) - sum(dy(:, j) * y(:, j)))
      end do
    case (A_LOG_SOFTMAX)
      do j = 1, nc
        dz(:, j) = dy(:, j) - exp(y(:, j)) * sum(dy(:, j))
      end do
    end select
  end subroutine activation_backward
end module colnn_activations
